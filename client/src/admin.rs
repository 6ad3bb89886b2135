//! [`Admin`]: topic administration.

use weir_protocol::messages::*;

use crate::client::{expect_body, Client};
use crate::error::Result;

/// Creates, deletes, lists and describes topics.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// Admin calls over `client`.
    pub fn new(client: Client) -> Self {
        Admin { client }
    }

    /// Creates a topic; zero fields of `config` take the broker's defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        shards: u32,
        config: TopicConfig,
    ) -> Result<TopicMetadata> {
        let req = CreateTopicRequest {
            name: name.to_string(),
            shards,
            config,
        };
        Ok(expect_body!(self.client.call(req).await?, CreateTopic)?.topic)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = DeleteTopicRequest {
            name: name.to_string(),
        };
        expect_body!(self.client.call(req).await?, DeleteTopic).map(|_| ())
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<TopicMetadata>> {
        Ok(self.client.metadata(&[]).await?.topics)
    }

    /// One topic.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicMetadata> {
        let mut m = self.client.metadata(&[name]).await?;
        Ok(m.topics.remove(0))
    }

    /// The committed offsets of a group.
    pub async fn group_offsets(&self, group: &str) -> Result<Vec<OffsetEntry>> {
        let req = FetchOffsetsRequest {
            group: group.to_string(),
            shards: vec![],
        };
        Ok(expect_body!(self.client.call(req).await?, FetchOffsets)?.offsets)
    }

    /// Broker version, uptime and all topics.
    pub async fn status(&self) -> Result<MetadataResponse> {
        self.client.metadata(&[]).await
    }
}
