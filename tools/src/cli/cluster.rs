//! `weir cluster status`: one picture of a cluster put together from every node's
//! own answer. Placement (primary, copies, in-sync set, epoch) comes from the
//! controller's answer when it gave one (it applies metadata changes first), else
//! from the answer naming the highest epoch; the live fields of a shard (high-water
//! mark, each mirror's position) only its primary knows (`live = 1`), so every node
//! is asked. A node that does not answer is shown as unreachable, not an error.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use futures_util::future::join_all;
use serde_json::{json, Value};
use weir_client::Admin;
use weir_protocol::messages::{
    ConsensusRole, DescribeClusterResponse, MirrorState, ShardPlacement, NO_NODE,
};

/// Longest wait for one node's answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// `weir cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Nodes (reachable, alive, consensus role) and every shard's primary, copies,
    /// in-sync set, epoch, high-water mark and mirror lag.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// One shard's replication record: its copies, how far each holds the log, and
    /// the history of its primary and in-sync set (the newest 64 changes).
    History {
        /// TOPIC/SHARD, e.g. orders/0.
        shard: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Add a node to a running cluster. Start it first with `--join` (its `--peers`
    /// naming itself and a node of the cluster); the controller makes it a member,
    /// then the copies the placement hash now puts on it move there. Waits until they
    /// have (or `--no-wait`).
    AddNode {
        /// The new node's id (its `--node-id`).
        id: u32,
        /// Its protocol address as the other nodes and clients reach it (HOST:PORT).
        addr: String,
        #[command(flatten)]
        wait: super::nodes::Wait,
    },
    /// Remove a node: its copies move to the other nodes, then it leaves the
    /// consensus membership and the metadata. Waits until it is gone (or
    /// `--no-wait`); stop its process afterwards.
    RemoveNode {
        /// The node's id.
        id: u32,
        #[command(flatten)]
        wait: super::nodes::Wait,
    },
}

/// `weir shard ...`.
#[derive(Subcommand, Debug)]
pub enum ShardCmd {
    /// Move one copy of a shard to a node that holds none: the node becomes a mirror
    /// and catches up, the primary moves to it if it was on the source, then the
    /// source stops being a copy. Waits until the move finished or was given up.
    Move {
        /// TOPIC/SHARD, e.g. orders/0.
        shard: String,
        /// The node that gets the copy.
        #[arg(long)]
        to: u32,
        /// The node whose copy moves [default: the shard's primary].
        #[arg(long)]
        from: Option<u32>,
        /// Give up waiting after this long (the move goes on in the cluster).
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// Start the move and return.
        #[arg(long)]
        no_wait: bool,
    },
}

/// History kinds of a move, as DescribeShardHistory numbers them.
const MOVE_STARTED: u8 = 3;
const MOVE_FINISHED: u8 = 4;
const MOVE_ABORTED: u8 = 5;

/// Runs one shard command.
pub async fn run_shard(admin: &Admin, cmd: ShardCmd) -> anyhow::Result<()> {
    let ShardCmd::Move {
        shard: spec,
        to,
        from,
        timeout_s,
        no_wait,
    } = cmd;
    let (topic, shard) = parse_shard(&spec)?;
    let before = admin.shard_history(topic, shard).await?.events.len();
    let source = admin.move_shard(topic, shard, from, to).await?;
    println!("moving {topic}/{shard} from node {source} to node {to}");
    if no_wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
    let mut seen = before;
    loop {
        // The record keeps the newest 64 changes: count from the move's start.
        let h = admin.shard_history(topic, shard).await?;
        let start = h
            .events
            .iter()
            .rposition(|e| e.kind == MOVE_STARTED)
            .unwrap_or(0);
        for e in h.events.iter().skip(seen.min(h.events.len()).max(start)) {
            println!(
                "{}  {:<16} epoch {:<4} primary {:<8} copies {:<12} in sync {}",
                e.at_ms,
                kind_name(e.kind),
                e.epoch,
                if e.primary == NO_NODE {
                    "-".into()
                } else {
                    node_name(e.primary)
                },
                ids(&e.replicas),
                ids(&e.in_sync)
            );
        }
        seen = h.events.len();
        match h.events.iter().skip(start).map(|e| e.kind).next_back() {
            Some(MOVE_FINISHED) => {
                println!("move finished");
                return Ok(());
            }
            Some(MOVE_ABORTED) => anyhow::bail!(
                "the move was given up (the target stopped answering before it caught up)"
            ),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the move has not finished within {timeout_s} s; it goes on in the cluster (weir cluster history {spec})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn parse_shard(spec: &str) -> anyhow::Result<(&str, u32)> {
    spec.rsplit_once('/')
        .and_then(|(t, s)| Some((t, s.parse::<u32>().ok()?)))
        .with_context(|| format!("{spec:?}: name a shard as TOPIC/SHARD, e.g. orders/0"))
}

fn kind_name(k: u8) -> &'static str {
    match k {
        0 => "created",
        1 => "primary changed",
        2 => "in-sync changed",
        MOVE_STARTED => "move started",
        MOVE_FINISHED => "move finished",
        MOVE_ABORTED => "move given up",
        _ => "unknown",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// One node as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u32,
    pub addr: String,
    /// It answered this command.
    pub reachable: bool,
    /// The controller counts it alive.
    pub alive: bool,
    pub role: ConsensusRole,
    /// Being removed.
    pub draining: bool,
    /// Moves of copies to or from it, planned or running.
    pub moves_pending: u32,
}

/// One shard as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub placement: ShardPlacement,
    /// The primary's live view (`high_watermark`, `mirrors`), when it answered.
    pub live: Option<(u64, Vec<MirrorState>)>,
}

/// The merged picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub controller: u32,
    pub nodes: Vec<NodeStatus>,
    pub shards: Vec<ShardStatus>,
}

/// Runs one cluster command.
pub async fn run(admin: &Admin, cmd: ClusterCmd) -> anyhow::Result<()> {
    let format = match cmd {
        ClusterCmd::Status { format } => format,
        ClusterCmd::History { shard, format } => return history(admin, &shard, format).await,
        ClusterCmd::AddNode { id, addr, wait } => {
            return super::nodes::add(admin, id, &addr, wait).await
        }
        ClusterCmd::RemoveNode { id, wait } => return super::nodes::remove(admin, id, wait).await,
    };
    let first = admin.describe_cluster().await?;
    if first.enabled == 0 {
        match format {
            Format::Text => println!("single-node broker (no cluster)"),
            Format::Json => println!("{}", json!({ "enabled": false })),
        }
        return Ok(());
    }
    let asks = first.nodes.iter().map(|n| async move {
        let r = tokio::time::timeout(NODE_TIMEOUT, admin.describe_cluster_at(&n.addr)).await;
        (n.node_id, r.ok().and_then(Result::ok))
    });
    let answers = join_all(asks).await;
    let status = merge(&first, &answers);
    match format {
        Format::Text => print!("{}", text(&status)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&to_json(&status))?),
    }
    Ok(())
}

/// `weir cluster history T/S`.
async fn history(admin: &Admin, spec: &str, format: Format) -> anyhow::Result<()> {
    let (topic, shard) = parse_shard(spec)?;
    let h = admin.shard_history(topic, shard).await?;
    // How far each copy holds the log: only the primary knows (its live view).
    let first = admin.describe_cluster().await?;
    let primary = first
        .shards
        .iter()
        .find(|p| p.topic == topic && p.shard == shard)
        .map_or(NO_NODE, |p| p.primary);
    let live = match first.nodes.iter().find(|n| n.node_id == primary) {
        Some(n) => tokio::time::timeout(NODE_TIMEOUT, admin.describe_cluster_at(&n.addr))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|d| {
                d.shards
                    .into_iter()
                    .find(|p| p.topic == topic && p.shard == shard && p.live == 1)
            }),
        None => None,
    };
    let held = |node: u32| -> Option<u64> {
        let l = live.as_ref()?;
        if node == l.primary {
            return Some(l.high_watermark);
        }
        l.mirrors
            .iter()
            .find(|m| m.node_id == node)
            .map(|m| m.offset)
    };
    let kind = kind_name;
    let cause = |e: &weir_protocol::messages::ShardEvent| -> Option<&'static str> {
        (MOVE_STARTED..=MOVE_ABORTED)
            .contains(&e.kind)
            .then(|| super::nodes::cause_name(e.cause))
    };
    match format {
        Format::Json => {
            let v = json!({
                "topic": h.topic,
                "shard": h.shard,
                "copies": h.replicas.iter().map(|&n| json!({
                    "node": n,
                    "primary": n == primary,
                    "holds_below": held(n),
                })).collect::<Vec<_>>(),
                "history": h.events.iter().map(|e| json!({
                    "at_ms": e.at_ms,
                    "kind": kind(e.kind),
                    "epoch": e.epoch,
                    "primary": (e.primary != NO_NODE).then_some(e.primary),
                    "in_sync": e.in_sync,
                    "copies": e.replicas,
                    "cause": cause(e),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            let mut rows = vec![vec![
                "COPY".to_string(),
                "ROLE".into(),
                "HOLDS BELOW".into(),
            ]];
            for &n in &h.replicas {
                rows.push(vec![
                    node_name(n),
                    if n == primary { "primary" } else { "mirror" }.into(),
                    held(n).map_or("-".into(), |o| o.to_string()),
                ]);
            }
            print!("{}", table(&rows));
            println!();
            let mut rows = vec![vec![
                "AT_MS".to_string(),
                "CHANGE".into(),
                "EPOCH".into(),
                "PRIMARY".into(),
                "IN SYNC".into(),
                "COPIES".into(),
            ]];
            for e in &h.events {
                rows.push(vec![
                    e.at_ms.to_string(),
                    match cause(e) {
                        Some(c) => format!("{} ({c})", kind(e.kind)),
                        None => kind(e.kind).into(),
                    },
                    e.epoch.to_string(),
                    if e.primary == NO_NODE {
                        "-".into()
                    } else {
                        node_name(e.primary)
                    },
                    ids(&e.in_sync),
                    if e.replicas.is_empty() {
                        "-".into()
                    } else {
                        ids(&e.replicas)
                    },
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

/// Puts the nodes' answers together (see the module docs). `first` is the answer of
/// whichever node the client asked first; `answers` holds each node's own answer, or
/// `None` when it did not answer.
pub fn merge(
    first: &DescribeClusterResponse,
    answers: &[(u32, Option<DescribeClusterResponse>)],
) -> Status {
    let answered: BTreeMap<u32, &DescribeClusterResponse> = answers
        .iter()
        .filter_map(|(id, a)| a.as_ref().filter(|a| a.enabled == 1).map(|a| (*id, a)))
        .collect();
    let controller = answered
        .values()
        .map(|a| a.controller)
        .find(|c| *c != NO_NODE)
        .unwrap_or(first.controller);
    let base = answered.get(&controller).copied().unwrap_or(first);
    let nodes = base
        .nodes
        .iter()
        .map(|n| {
            // A node knows its own consensus role best.
            let own = answered
                .get(&n.node_id)
                .and_then(|a| a.nodes.iter().find(|m| m.node_id == n.node_id));
            NodeStatus {
                id: n.node_id,
                addr: n.addr.clone(),
                reachable: answered.contains_key(&n.node_id),
                alive: n.alive == 1,
                role: own.map_or(n.role, |m| m.role),
                draining: n.draining == 1,
                moves_pending: n.moves_pending,
            }
        })
        .collect();
    let mut shards: BTreeMap<(String, u32), ShardPlacement> = BTreeMap::new();
    for a in std::iter::once(base).chain(answered.values().copied()) {
        for p in &a.shards {
            let key = (p.topic.clone(), p.shard);
            let newer = shards.get(&key).is_none_or(|old| p.epoch > old.epoch);
            if newer {
                let mut p = p.clone();
                (p.live, p.high_watermark, p.mirrors) = (0, 0, Vec::new());
                shards.insert(key, p);
            }
        }
    }
    let shards = shards
        .into_values()
        .map(|placement| {
            let live = answered.get(&placement.primary).and_then(|a| {
                a.shards
                    .iter()
                    .find(|p| {
                        p.topic == placement.topic && p.shard == placement.shard && p.live == 1
                    })
                    .map(|p| (p.high_watermark, p.mirrors.clone()))
            });
            ShardStatus { placement, live }
        })
        .collect();
    Status {
        controller,
        nodes,
        shards,
    }
}

fn role_name(r: ConsensusRole) -> &'static str {
    match r {
        ConsensusRole::Unknown => "unknown",
        ConsensusRole::Leader => "leader",
        ConsensusRole::Follower => "follower",
        ConsensusRole::Candidate => "candidate",
        ConsensusRole::Learner => "learner",
    }
}

fn ids(v: &[u32]) -> String {
    let s: Vec<String> = v.iter().map(u32::to_string).collect();
    s.join(",")
}

fn node_name(id: u32) -> String {
    if id == NO_NODE {
        "none".into()
    } else {
        id.to_string()
    }
}

/// Left-aligned columns, two spaces apart, each as wide as its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The text form.
pub fn text(s: &Status) -> String {
    let mut out = format!(
        "cluster of {} nodes, controller {}\n",
        s.nodes.len(),
        node_name(s.controller)
    );
    let mut rows = vec![vec![
        "node".into(),
        "addr".into(),
        "reachable".into(),
        "alive".into(),
        "role".into(),
        "moves".into(),
    ]];
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    for n in &s.nodes {
        rows.push(vec![
            n.id.to_string(),
            n.addr.clone(),
            yes(n.reachable),
            yes(n.alive),
            if n.draining {
                format!("{} (draining)", role_name(n.role))
            } else {
                role_name(n.role).into()
            },
            n.moves_pending.to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(&format!("{} shards\n", s.shards.len()));
    let mut rows = vec![vec![
        "shard".into(),
        "primary".into(),
        "epoch".into(),
        "replicas".into(),
        "in-sync".into(),
        "high-watermark".into(),
        "mirror lag (node:records)".into(),
    ]];
    for sh in &s.shards {
        let p = &sh.placement;
        let (hwm, lag) = match &sh.live {
            Some((hwm, mirrors)) => (
                hwm.to_string(),
                mirrors
                    .iter()
                    .map(|m| format!("{}:{}", m.node_id, m.lag_records))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            format!("{}/{}", p.topic, p.shard),
            node_name(p.primary),
            p.epoch.to_string(),
            ids(&p.replicas),
            ids(&p.in_sync),
            hwm,
            lag,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// The JSON form (README, "weir cluster status").
pub fn to_json(s: &Status) -> Value {
    json!({
        "enabled": true,
        "controller": s.controller,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "addr": n.addr,
            "reachable": n.reachable,
            "alive": n.alive,
            "role": role_name(n.role),
            "draining": n.draining,
            "moves_pending": n.moves_pending,
        })).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(|sh| {
            let p = &sh.placement;
            let (hwm, mirrors) = match &sh.live {
                Some((hwm, mirrors)) => (json!(hwm), json!(mirrors.iter().map(|m| json!({
                    "node": m.node_id,
                    "offset": m.offset,
                    "lag_records": m.lag_records,
                    "caught_up_ms_ago": m.caught_up_ms_ago,
                })).collect::<Vec<_>>())),
                None => (Value::Null, Value::Null),
            };
            json!({
                "topic": p.topic,
                "shard": p.shard,
                "primary": p.primary,
                "epoch": p.epoch,
                "replicas": p.replicas,
                "in_sync": p.in_sync,
                "high_watermark": hwm,
                "mirrors": mirrors,
            })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::messages::NodeInfo;

    fn node(id: u32, alive: u8, role: ConsensusRole) -> NodeInfo {
        NodeInfo {
            node_id: id,
            addr: format!("h:{id}"),
            alive,
            role,
            draining: 0,
            moves_pending: 0,
        }
    }

    fn placement(primary: u32, epoch: u32, live: Option<u64>) -> ShardPlacement {
        ShardPlacement {
            topic: "t".into(),
            shard: 0,
            primary,
            epoch,
            replicas: vec![primary, 3],
            in_sync: vec![primary, 3],
            live: u8::from(live.is_some()),
            high_watermark: live.unwrap_or(0),
            mirrors: live
                .map(|_| {
                    vec![MirrorState {
                        node_id: 3,
                        offset: 90,
                        lag_records: 10,
                        caught_up_ms_ago: 4,
                    }]
                })
                .unwrap_or_default(),
        }
    }

    fn answer(by: u32, controller: u32, shard: ShardPlacement) -> DescribeClusterResponse {
        DescribeClusterResponse {
            enabled: 1,
            node_id: by,
            controller,
            nodes: vec![
                node(
                    1,
                    1,
                    if by == 1 {
                        ConsensusRole::Leader
                    } else {
                        ConsensusRole::Unknown
                    },
                ),
                node(
                    2,
                    1,
                    if by == 2 {
                        ConsensusRole::Follower
                    } else {
                        ConsensusRole::Unknown
                    },
                ),
                node(3, 0, ConsensusRole::Unknown),
            ],
            shards: vec![shard],
        }
    }

    #[test]
    fn merges_placement_live_fields_and_unreachable_nodes() {
        // Node 2 still thinks it leads t/0 (epoch 1); the controller (1) says node 1
        // took over at epoch 2, and node 1 is the primary with the live view.
        let a1 = answer(1, 1, placement(1, 2, Some(100)));
        let a2 = answer(2, 1, placement(2, 1, None));
        let s = merge(&a2, &[(1, Some(a1)), (2, Some(a2.clone())), (3, None)]);
        assert_eq!(s.controller, 1);
        let reach: Vec<bool> = s.nodes.iter().map(|n| n.reachable).collect();
        assert_eq!(reach, vec![true, true, false]);
        assert_eq!(s.nodes[0].role, ConsensusRole::Leader);
        assert_eq!(s.nodes[1].role, ConsensusRole::Follower);
        assert!(!s.nodes[2].alive);
        assert_eq!(s.shards.len(), 1);
        assert_eq!(s.shards[0].placement.primary, 1);
        assert_eq!(s.shards[0].placement.epoch, 2);
        assert_eq!(s.shards[0].live.as_ref().map(|l| l.0), Some(100));
        let t = text(&s);
        assert!(t.contains("t/0"), "{t}");
        assert!(t.contains("3:10"), "{t}");
        let j = to_json(&s);
        assert_eq!(j["shards"][0]["high_watermark"], 100);
        assert_eq!(j["shards"][0]["mirrors"][0]["lag_records"], 10);
        assert_eq!(j["nodes"][2]["reachable"], false);
    }

    #[test]
    fn a_primary_that_did_not_answer_leaves_the_live_fields_unknown() {
        let a2 = answer(2, 2, placement(1, 2, None));
        let s = merge(&a2, &[(1, None), (2, Some(a2.clone()))]);
        assert_eq!(s.shards[0].live, None);
        let t = text(&s);
        let row = t.lines().find(|l| l.contains("t/0")).expect("shard row");
        assert!(row.contains(" -"), "{row}");
        assert_eq!(to_json(&s)["shards"][0]["high_watermark"], Value::Null);
    }

    #[test]
    fn columns_are_aligned() {
        let t = table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(t, "  a    bb\n  ccc  d\n");
    }
}
