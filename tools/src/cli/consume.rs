//! `weir consume TOPIC`: print messages, one per line, by offset (`--mode stream`,
//! optionally as a group that commits what was printed) or leased from a queue
//! (`--mode queue`, in `queue.rs`).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use weir_client::{Client, Consumer, DeliveryOrder, Message, OffsetReset};
use weir_protocol::classes::ClassMap;

use super::queue;

/// Most messages one poll asks for, so a slow terminal never holds many.
const POLL_MAX: usize = 1000;

/// Flags of `weir consume`.
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume as this group and commit what was printed.
    #[arg(long)]
    pub group: Option<String>,
    /// Start at the earliest offset when there is no committed one.
    #[arg(long)]
    pub from_beginning: bool,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Exit when nothing arrives for this long.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    #[arg(long, value_enum, default_value_t = Format::Value)]
    pub format: Format,
    /// `offset` (stored order) or `priority` (P0 first, weighted fair with aging).
    #[arg(long, value_enum, default_value_t = OrderArg::Offset)]
    pub order: OrderArg,
    /// `stream` reads by offset; `queue` leases each record and acks (or nacks) it.
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,
    /// Queue mode: nack (retriable) every record instead of acking it.
    #[arg(long)]
    pub nack_all: bool,
    /// Queue mode: wait this long before acking each record.
    #[arg(long, default_value_t = 0)]
    pub ack_after_ms: u64,
}

/// `--mode`: read a stream by offset, or lease from a queue.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Stream,
    Queue,
}

/// `--order` of stream mode.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderArg {
    Offset,
    Priority,
}

/// `--format`: how each message is printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// The value only.
    Value,
    /// Class, priority, complexity, shard/offset and key before the value.
    Meta,
    /// One JSON object per message with every field.
    Json,
}

/// Runs `weir consume` in the mode asked for.
pub async fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Queue => {
            let group = args.group.context("--mode queue needs --group")?;
            queue::consume_queue(
                client,
                &args.topic,
                &group,
                args.count,
                args.timeout_ms,
                args.nack_all,
                args.ack_after_ms,
            )
            .await
        }
        Mode::Stream => consume_stream(client, args).await,
    }
}

/// Polls and prints until `--count` messages or `--timeout-ms` of silence, then
/// commits (as a group) what was printed.
async fn consume_stream(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let order = match args.order {
        OrderArg::Offset => DeliveryOrder::Offset,
        OrderArg::Priority => DeliveryOrder::Priority,
    };
    let mut b = Consumer::builder(client)
        .topic(args.topic)
        .order(order)
        .auto_commit(false)
        .fetch_max_wait(Duration::from_millis(args.timeout_ms.min(500)))
        .reset(if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        });
    if let Some(g) = &args.group {
        b = b.group(g.clone());
    }
    let mut consumer = b.build()?;
    let classes = client.class_map();
    let mut printed = 0usize;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let want = args.count.map_or(POLL_MAX, |c| (c - printed).min(POLL_MAX));
        if want == 0 {
            break;
        }
        let msgs = consumer
            .poll(want, Duration::from_millis(args.timeout_ms))
            .await?;
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            write_message(&mut out, &m, args.format, &classes)?;
            printed += 1;
        }
        out.flush()?;
    }
    if args.group.is_some() {
        consumer.commit().await.context("committing offsets")?;
        consumer.close().await?;
    }
    Ok(())
}

/// Prints one message as one line in `format`.
fn write_message(
    out: &mut impl Write,
    m: &Message,
    format: Format,
    classes: &ClassMap,
) -> std::io::Result<()> {
    match format {
        Format::Value => {
            out.write_all(&m.value)?;
            out.write_all(b"\n")
        }
        Format::Meta => {
            write!(
                out,
                "{} p{} c{} {}/{}@{} key={} ",
                classes.class_of(m.priority),
                m.priority,
                m.complexity,
                m.topic,
                m.shard,
                m.offset,
                String::from_utf8_lossy(&m.key)
            )?;
            out.write_all(&m.value)?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = m
                .headers
                .iter()
                .map(|h| (h.name.clone(), String::from_utf8_lossy(&h.value).into()))
                .collect();
            let v = serde_json::json!({
                "topic": &*m.topic, "shard": m.shard, "offset": m.offset,
                "key": String::from_utf8_lossy(&m.key), "priority": m.priority,
                "complexity": m.complexity, "timestamp_ms": m.timestamp_ms,
                "headers": headers, "value": String::from_utf8_lossy(&m.value),
            });
            writeln!(out, "{v}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weir_protocol::batch::Header;

    fn message() -> Message {
        Message {
            topic: "orders".into(),
            shard: 2,
            offset: 41,
            priority: 1,
            complexity: 3,
            timestamp_ms: 1_700_000_000_000,
            key: Bytes::from_static(b"user-1"),
            value: Bytes::from_static(b"hello"),
            headers: vec![Header {
                name: "trace".into(),
                value: Bytes::from_static(b"t-1"),
            }],
        }
    }

    fn printed(format: Format) -> String {
        let mut out = Vec::new();
        write_message(&mut out, &message(), format, &ClassMap::default()).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn each_format_prints_one_line_per_message() {
        assert_eq!(printed(Format::Value), "hello\n");
        assert_eq!(
            printed(Format::Meta),
            "P0 p1 c3 orders/2@41 key=user-1 hello\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(printed(Format::Json).trim_end()).expect("one JSON object");
        assert_eq!(
            json,
            serde_json::json!({
                "topic": "orders", "shard": 2, "offset": 41, "key": "user-1",
                "priority": 1, "complexity": 3, "timestamp_ms": 1_700_000_000_000i64,
                "headers": {"trace": "t-1"}, "value": "hello",
            })
        );
    }
}
