//! `weir cluster add-node` and `remove-node`: start the change (apis AddNode and
//! RemoveNode), then follow it on DescribeCluster until the moves it caused are done
//! (an added node) or the node is gone (a removed one).

use std::time::{Duration, Instant};

use clap::Args;
use weir_client::Admin;
use weir_protocol::messages::DescribeClusterResponse;

/// How long to wait for the moves.
#[derive(Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Give up waiting after this long (the change goes on in the cluster).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Start the change and return.
    #[arg(long)]
    pub no_wait: bool,
}

/// How often progress is read.
const POLL: Duration = Duration::from_millis(500);

/// The name of a move's cause (DescribeShardHistory's `cause`).
pub fn cause_name(cause: u8) -> &'static str {
    match cause {
        0 => "operator",
        1 => "node added",
        2 => "node removed",
        _ => "unknown cause",
    }
}

/// DescribeCluster as the controller answers it (it applies every change first; a
/// removed node, still running, would go on naming itself).
async fn controller_view(admin: &Admin) -> Option<DescribeClusterResponse> {
    let d = admin.describe_cluster().await.ok()?;
    if d.node_id == d.controller {
        return Some(d);
    }
    let addr = &d.nodes.iter().find(|n| n.node_id == d.controller)?.addr;
    admin.describe_cluster_at(addr).await.ok()
}

/// `weir cluster add-node ID ADDR`.
pub async fn add(admin: &Admin, id: u32, addr: &str, wait: Wait) -> anyhow::Result<()> {
    let planned = admin.add_node(id, addr).await?;
    println!("node {id} ({addr}) is a member of the cluster; {planned} copies will move to it");
    if wait.no_wait {
        return Ok(());
    }
    follow(admin, id, wait, false).await
}

/// `weir cluster remove-node ID`.
pub async fn remove(admin: &Admin, id: u32, wait: Wait) -> anyhow::Result<()> {
    let pending = admin.remove_node(id).await?;
    println!("node {id} is draining: {pending} copies will move away, then it leaves the cluster");
    if wait.no_wait {
        return Ok(());
    }
    follow(admin, id, wait, true).await?;
    println!("node {id} has left the cluster; its process can be stopped");
    Ok(())
}

/// Prints the node's pending moves as they go down, until none are left (and, when
/// `until_gone`, the node is no longer in the cluster).
async fn follow(admin: &Admin, id: u32, wait: Wait, until_gone: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(wait.timeout_s);
    let mut last = None;
    loop {
        // A controller change in the middle answers an error for a moment: try again.
        if let Some(d) = controller_view(admin).await {
            match d.nodes.iter().find(|n| n.node_id == id) {
                None if until_gone => return Ok(()),
                // Asked of a node that has not applied the addition yet.
                None => {}
                Some(n) => {
                    if last != Some(n.moves_pending) {
                        println!("{} moves pending", n.moves_pending);
                        last = Some(n.moves_pending);
                    }
                    if n.moves_pending == 0 && !until_gone {
                        println!("node {id} holds its share of the copies");
                        return Ok(());
                    }
                }
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "not done within {} s; it goes on in the cluster (weir cluster status)",
                wait.timeout_s
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
