//! `weir offsets GROUP`: what a consumer group has committed.

use weir_client::Admin;

/// Prints `topic/shard<TAB>offset` per committed position of `group`.
pub async fn offsets(admin: &Admin, group: &str) -> anyhow::Result<()> {
    for e in admin.group_offsets(group).await? {
        println!("{}/{}\t{}", e.topic, e.shard, e.offset);
    }
    Ok(())
}
