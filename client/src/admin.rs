//! [`Admin`]: topic administration, quotas, the broker's flow-control state, the
//! cluster's description, and security administration (users, API keys, ACLs).

use weir_protocol::messages::*;

use crate::client::{expect_body, Client};
use crate::error::Result;

/// Creates, deletes, lists and describes topics; reads and changes quotas.
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

    /// Changes `topic`'s shard count to `shards` while it is in use (grow or shrink;
    /// PROTOCOL.md "Resharding"). Returns the reshard as recorded: its epoch and
    /// where it cut each shard's log. Producers of this SDK learn the new count from
    /// their first LAYOUT_CHANGED answer; consumers from the next fetch.
    pub async fn reshard_topic(&self, topic: &str, shards: u32) -> Result<Reshard> {
        let req = ReshardTopicRequest {
            topic: topic.to_string(),
            shards,
        };
        expect_body!(self.client.call(req).await?, ReshardTopic).map(|r| r.reshard)
    }

    /// Deletes every record with `key` from `topic` (the right to be forgotten):
    /// readers no longer see them once this returns, and the broker removes their
    /// bytes from disk within its `delete_key_compact_ms`. Returns, per shard, the
    /// offset below which they are deleted (records produced later are kept).
    pub async fn delete_key(&self, topic: &str, key: &[u8]) -> Result<Vec<TombstonePoint>> {
        let req = DeleteKeyRequest {
            topic: topic.to_string(),
            key: bytes::Bytes::copy_from_slice(key),
        };
        Ok(expect_body!(self.client.call(req).await?, DeleteKey)?.shards)
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

    /// Quota entries of `client_ids` (every entry, the default `""` first, when empty).
    pub async fn describe_quotas(&self, client_ids: &[&str]) -> Result<Vec<QuotaEntry>> {
        let req = DescribeQuotasRequest {
            client_ids: client_ids.iter().map(|s| s.to_string()).collect(),
        };
        Ok(expect_body!(self.client.call(req).await?, DescribeQuotas)?.entries)
    }

    /// Sets the quota of `client_id` (`""` = the default quota) at runtime.
    pub async fn set_quota(&self, client_id: &str, quota: Quota) -> Result<QuotaEntry> {
        self.alter_quota(client_id, false, quota).await
    }

    /// Removes the quota of `client_id`; it falls back to the default quota.
    pub async fn remove_quota(&self, client_id: &str) -> Result<QuotaEntry> {
        self.alter_quota(client_id, true, Quota::default()).await
    }

    async fn alter_quota(&self, client_id: &str, remove: bool, quota: Quota) -> Result<QuotaEntry> {
        let req = AlterQuotasRequest {
            client_id: client_id.to_string(),
            remove: u8::from(remove),
            quota,
        };
        Ok(expect_body!(self.client.call(req).await?, AlterQuotas)?.entry)
    }

    /// The load agents' history of the node and of `topic`'s shards (every topic's when
    /// empty): `resolution_s` 1 (the last hour) or 60 (the last day), the newest
    /// `max_samples` per series (0 = all kept), with each ingest rate's forecast.
    pub async fn load_history(
        &self,
        topic: &str,
        resolution_s: u32,
        max_samples: u32,
    ) -> Result<LoadHistoryResponse> {
        let req = LoadHistoryRequest {
            topic: topic.to_string(),
            resolution_s,
            max_samples,
        };
        expect_body!(self.client.call(req).await?, LoadHistory)
    }

    /// The broker's load, shedding state and per-client flow state.
    pub async fn flow_status(&self) -> Result<FlowStatusResponse> {
        expect_body!(self.client.call(FlowStatusRequest {}).await?, FlowStatus)
    }

    /// Creates user `name` or changes its password. Only the SCRAM credential
    /// derived from the password is sent. True when the user is new.
    pub async fn upsert_user(&self, name: &str, password: &str) -> Result<bool> {
        let req = UpsertUserRequest {
            name: name.to_string(),
            credential: crate::auth::credential_for(password)?,
        };
        Ok(expect_body!(self.client.call(req).await?, UpsertUser)?.created == 1)
    }

    /// Deletes a user (UNKNOWN_PRINCIPAL if there is none).
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let req = DeleteUserRequest {
            name: name.to_string(),
        };
        expect_body!(self.client.call(req).await?, DeleteUser).map(|_| ())
    }

    /// User names.
    pub async fn list_users(&self) -> Result<Vec<String>> {
        Ok(expect_body!(self.client.call(ListUsersRequest {}).await?, ListUsers)?.users)
    }

    /// Issues an API key acting as `principal`; the returned key is shown only now.
    pub async fn create_api_key(
        &self,
        principal: &str,
        description: &str,
    ) -> Result<CreateApiKeyResponse> {
        let req = CreateApiKeyRequest {
            principal: principal.to_string(),
            description: description.to_string(),
        };
        expect_body!(self.client.call(req).await?, CreateApiKey)
    }

    /// Revokes an API key by id.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        let req = RevokeApiKeyRequest {
            key_id: key_id.to_string(),
        };
        expect_body!(self.client.call(req).await?, RevokeApiKey).map(|_| ())
    }

    /// API keys, without secrets.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyEntry>> {
        Ok(expect_body!(self.client.call(ListApiKeysRequest {}).await?, ListApiKeys)?.keys)
    }

    /// Adds (or with `remove`, removes) an ACL entry; true when something changed.
    pub async fn alter_acl(&self, entry: AclEntry, remove: bool) -> Result<bool> {
        let req = AlterAclsRequest {
            remove: u8::from(remove),
            entry,
        };
        Ok(expect_body!(self.client.call(req).await?, AlterAcls)?.changed == 1)
    }

    /// ACL entries of `principal`, or all of them when it is empty.
    pub async fn describe_acls(&self, principal: &str) -> Result<Vec<AclEntry>> {
        let req = DescribeAclsRequest {
            principal: principal.to_string(),
        };
        Ok(expect_body!(self.client.call(req).await?, DescribeAcls)?.entries)
    }

    /// The cluster: nodes, and every shard's primary, copies and epoch, as the node
    /// this client asks knows it. A single-node broker answers `enabled = 0`.
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse> {
        let req = DescribeClusterRequest { topics: Vec::new() };
        expect_body!(self.client.call(req).await?, DescribeCluster)
    }

    /// One shard's replication record (cluster only): its copies and the newest
    /// changes of its primary and in-sync set, oldest first.
    pub async fn shard_history(
        &self,
        topic: &str,
        shard: u32,
    ) -> Result<DescribeShardHistoryResponse> {
        let req = DescribeShardHistoryRequest {
            topic: topic.to_string(),
            shard,
        };
        expect_body!(self.client.call(req).await?, DescribeShardHistory)
    }

    /// Starts moving one copy of `topic`/`shard` to node `to` (cluster only): from node
    /// `from`, or from the primary when `from` is `None`. Returns the source node; the
    /// move goes on in the cluster ([`Admin::shard_history`] shows its steps).
    pub async fn move_shard(
        &self,
        topic: &str,
        shard: u32,
        from: Option<u32>,
        to: u32,
    ) -> Result<u32> {
        let req = ShardMoveRequest {
            topic: topic.to_string(),
            shard,
            from_node: from.unwrap_or(weir_protocol::messages::NO_NODE),
            to_node: to,
        };
        Ok(expect_body!(self.client.call(req).await?, ShardMove)?.from_node)
    }

    /// Adds node `id` (running with `--join`) at `addr` to the cluster (cluster only).
    /// Returns how many copies are planned to move to it; the moves go on in the
    /// cluster (DescribeCluster's `moves_pending`).
    pub async fn add_node(&self, id: u32, addr: &str) -> Result<u32> {
        let req = AddNodeRequest {
            node_id: id,
            addr: addr.to_string(),
        };
        Ok(expect_body!(self.client.call(req).await?, AddNode)?.moves_planned)
    }

    /// Starts removing node `id` (cluster only): its copies move away, then it leaves
    /// the cluster. Returns how many copies it still holds.
    pub async fn remove_node(&self, id: u32) -> Result<u32> {
        let req = RemoveNodeRequest { node_id: id };
        Ok(expect_body!(self.client.call(req).await?, RemoveNode)?.moves_pending)
    }

    /// DescribeCluster asked of the node at `addr` itself (not routed, not retried):
    /// only a shard's primary answers its live fields (`live = 1`: high-water mark,
    /// mirror positions), so `weir cluster status` asks every node.
    pub async fn describe_cluster_at(&self, addr: &str) -> Result<DescribeClusterResponse> {
        let req = DescribeClusterRequest { topics: Vec::new() };
        expect_body!(
            self.client.call_node(addr, req.into()).await?,
            DescribeCluster
        )
    }
}
