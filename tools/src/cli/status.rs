//! `weir status`: one screen of the broker's state — topics and offsets, flow control
//! (from `quota`) and queues (from `queue`).

use weir_client::{Admin, Client};

use super::{queue, quota};

/// Prints the broker's version, uptime, shard offsets, flow status and queues.
pub async fn run(client: &Client, admin: &Admin, broker: &str) -> anyhow::Result<()> {
    let m = admin.status().await?;
    println!("{} at {}, up {} s", m.broker_software, broker, m.uptime_s);
    println!("{} topics", m.topics.len());
    for t in m.topics {
        for s in t.shards {
            println!(
                "  {}/{}: offsets [{}, {})",
                t.name, s.shard, s.log_start_offset, s.high_watermark
            );
        }
    }
    let flow = admin.flow_status().await?;
    print!("{}", quota::format_flow_status(&flow));
    let queues = weir_client::queue_status(client, "", "").await?;
    queue::print_queues(&queues);
    Ok(())
}
