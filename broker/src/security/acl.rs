//! What each request needs: the (resource, operation) pairs a principal must be
//! granted for the broker to serve it. One table, next to nothing else, so a new api
//! cannot be served without deciding what it needs (the match is exhaustive).

use weir_protocol::messages::{Operation, ResourceType};
use weir_protocol::Request;

/// One thing a request needs: `operation` on the resource `name` of type `resource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need<'a> {
    pub resource: ResourceType,
    pub name: &'a str,
    pub operation: Operation,
}

const fn need(resource: ResourceType, name: &str, operation: Operation) -> Need<'_> {
    Need {
        resource,
        name,
        operation,
    }
}

/// The cluster's name in needs and grants.
pub const CLUSTER: &str = "*";

/// Calls `f` with each need of `request` until it returns false; returns whether
/// every call returned true. ApiVersions and Authenticate need nothing (they are how
/// a connection starts); InitProducerId needs only an authenticated principal.
pub fn each_need(request: &Request, mut f: impl FnMut(Need<'_>) -> bool) -> bool {
    use Operation::*;
    use ResourceType::{Cluster, Group, Topic};
    match request {
        Request::ApiVersions(_) | Request::Authenticate(_) | Request::InitProducerId(_) => true,
        Request::CreateTopic(r) => f(need(Topic, &r.name, Create)),
        Request::DeleteTopic(r) => f(need(Topic, &r.name, Delete)),
        Request::DeleteKey(r) => f(need(Topic, &r.topic, Delete)),
        Request::ReshardTopic(r) => f(need(Topic, &r.topic, Alter)),
        // Naming no topic lists them all: that is describing the cluster.
        Request::Metadata(r) if r.topics.is_empty() => f(need(Cluster, CLUSTER, Describe)),
        Request::Metadata(r) => r.topics.iter().all(|t| f(need(Topic, t, Describe))),
        Request::Produce(r) => f(need(Topic, &r.topic, Produce)),
        Request::Fetch(r) => f(need(Topic, &r.topic, Consume)),
        Request::PriorityFetch(r) => f(need(Topic, &r.topic, Consume)),
        Request::ListOffsets(r) => f(need(Topic, &r.topic, Describe)),
        Request::JoinGroup(r) => f(need(Group, &r.group, Consume)),
        Request::Heartbeat(r) => f(need(Group, &r.group, Consume)),
        Request::LeaveGroup(r) => f(need(Group, &r.group, Consume)),
        Request::CommitOffsets(r) => {
            f(need(Group, &r.group, Consume))
                && r.offsets.iter().all(|o| f(need(Topic, &o.topic, Consume)))
        }
        Request::FetchOffsets(r) => f(need(Group, &r.group, Describe)),
        Request::QueueFetch(r) => {
            f(need(Group, &r.group, Consume)) && f(need(Topic, &r.topic, Consume))
        }
        Request::Ack(r) => f(need(Group, &r.group, Consume)) && f(need(Topic, &r.topic, Consume)),
        Request::Nack(r) => f(need(Group, &r.group, Consume)) && f(need(Topic, &r.topic, Consume)),
        Request::ExtendLease(r) => {
            f(need(Group, &r.group, Consume)) && f(need(Topic, &r.topic, Consume))
        }
        Request::QueueStatus(r) => {
            f(need(Group, &r.group, Describe)) && f(need(Topic, &r.topic, Describe))
        }
        Request::DescribeQuotas(_) | Request::FlowStatus(_) => f(need(Cluster, CLUSTER, Describe)),
        Request::AlterQuotas(_)
        | Request::ShardMove(_)
        | Request::AddNode(_)
        | Request::RemoveNode(_) => f(need(Cluster, CLUSTER, Alter)),
        Request::LoadHistory(r) if r.topic.is_empty() => f(need(Cluster, CLUSTER, Describe)),
        Request::LoadHistory(r) => f(need(Topic, &r.topic, Describe)),
        Request::DescribeCluster(_) | Request::DescribeShardHistory(_) => {
            f(need(Cluster, CLUSTER, Describe))
        }
        // Inter-node traffic: only a principal with cluster admin (the nodes' own
        // identity when authentication is on) may move data or metadata between nodes.
        Request::MirrorFetch(_) | Request::ConsensusRpc(_) | Request::ClusterWrite(_) => {
            f(need(Cluster, CLUSTER, Admin))
        }
        Request::UpsertUser(_)
        | Request::DeleteUser(_)
        | Request::ListUsers(_)
        | Request::CreateApiKey(_)
        | Request::RevokeApiKey(_)
        | Request::ListApiKeys(_)
        | Request::AlterAcls(_)
        | Request::DescribeAcls(_) => f(need(Cluster, CLUSTER, Admin)),
    }
}

/// The audit log's name for a request that changes the broker's administrative state
/// (topics, quotas, users, keys, ACLs), and what it changes; `None` for the rest.
pub fn admin_change(request: &Request) -> Option<(&'static str, String)> {
    Some(match request {
        Request::CreateTopic(r) => ("create_topic", r.name.clone()),
        Request::DeleteTopic(r) => ("delete_topic", r.name.clone()),
        // The topic only: the key is the personal data being forgotten.
        Request::DeleteKey(r) => ("delete_key", r.topic.clone()),
        Request::ReshardTopic(r) => (
            "reshard_topic",
            format!("{} to {} shards", r.topic, r.shards),
        ),
        Request::AlterQuotas(r) => ("alter_quota", r.client_id.clone()),
        Request::ShardMove(r) => (
            "shard_move",
            format!("{}/{} to node {}", r.topic, r.shard, r.to_node),
        ),
        Request::AddNode(r) => ("add_node", format!("node {} at {}", r.node_id, r.addr)),
        Request::RemoveNode(r) => ("remove_node", format!("node {}", r.node_id)),
        Request::UpsertUser(r) => ("upsert_user", r.name.clone()),
        Request::DeleteUser(r) => ("delete_user", r.name.clone()),
        Request::CreateApiKey(r) => ("create_api_key", r.principal.clone()),
        Request::RevokeApiKey(r) => ("revoke_api_key", r.key_id.clone()),
        Request::AlterAcls(r) => (
            if r.remove == 0 {
                "add_acl"
            } else {
                "remove_acl"
            },
            format!(
                "{} {} {} {}",
                r.entry.principal,
                r.entry.resource_type.name(),
                r.entry.pattern,
                r.entry.operation.name()
            ),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::messages::*;

    fn needs(r: &Request) -> Vec<(ResourceType, String, Operation)> {
        let mut v = Vec::new();
        each_need(r, |n| {
            v.push((n.resource, n.name.to_string(), n.operation));
            true
        });
        v
    }

    #[test]
    fn requests_need_what_the_table_says() {
        let produce = Request::Produce(ProduceRequest {
            topic: "orders".into(),
            ..Default::default()
        });
        assert_eq!(
            needs(&produce),
            vec![(ResourceType::Topic, "orders".into(), Operation::Produce)]
        );
        let all = Request::Metadata(MetadataRequest { topics: vec![] });
        assert_eq!(needs(&all)[0].0, ResourceType::Cluster);
        let q = Request::Ack(AckRequest {
            group: "g".into(),
            topic: "t".into(),
            ..Default::default()
        });
        assert_eq!(needs(&q).len(), 2);
        assert!(needs(&Request::ApiVersions(Default::default())).is_empty());
    }

    #[test]
    fn the_first_refusal_stops_the_walk() {
        let m = Request::Metadata(MetadataRequest {
            topics: vec!["a".into(), "b".into(), "c".into()],
        });
        let mut seen = 0;
        assert!(!each_need(&m, |n| {
            seen += 1;
            n.name != "b"
        }));
        assert_eq!(seen, 2);
    }
}
