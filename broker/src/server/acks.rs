//! When a produce may be answered: the one place that turns an ack level into what
//! the broker waits for before it replies, and waits for it.
//!
//! - `none`: queued and never answered (a refusal is only counted and logged);
//! - `leader`: answered once the shard writer has written the batches into the log
//!   (the page cache) and published the new high-water mark;
//! - `durable`: answered once a flush that covers them has finished (group commit:
//!   one flush answers every durable waiter of its group);
//! - `mirrored`: in a cluster, answered once every copy in the shard's in-sync set
//!   holds the batches (the replicated high-water mark passed them; refused up front
//!   with NOT_ENOUGH_MIRRORS when the set is smaller than `min_in_sync`); on a single
//!   node, where the one copy is the whole in-sync set, the same as `durable`.
//!
//! A new level is one new [`Wait`] (and the writer's support for it) plus one arm of
//! [`AckPlan::for_level`]; the connection and the produce path take an [`AckPlan`] and
//! never look at the level themselves.

use std::time::Duration;

use weir_protocol::messages::Acks;
use weir_protocol::ErrorCode;

use crate::error::BrokerError;
use crate::shard::writer::PendingAppend;
use crate::shard::{AppendError, AppendOutcome};

/// What the shard writer must reach before it answers an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The batches are in the log and below the high-water mark.
    Written,
    /// ... and a flush covering them has finished.
    Flushed,
}

/// How one produce is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPlan {
    /// What the writer waits for.
    pub wait: Wait,
    /// Whether the client gets an answer at all.
    pub reply: bool,
    /// Whether the answer also waits for every in-sync mirror (a cluster).
    pub mirrored: bool,
}

impl AckPlan {
    /// The plan for an ack level, or the refusal of a level this broker cannot give.
    pub fn for_level(level: Acks, cluster: bool) -> Result<AckPlan, BrokerError> {
        let plan = |wait, reply, mirrored| {
            Ok(AckPlan {
                wait,
                reply,
                mirrored,
            })
        };
        match level {
            Acks::None => plan(Wait::Written, false, false),
            Acks::Leader => plan(Wait::Written, true, false),
            Acks::Durable => plan(Wait::Flushed, true, false),
            Acks::Mirrored if cluster => plan(Wait::Written, true, true),
            Acks::Mirrored => plan(Wait::Flushed, true, false),
        }
    }

    /// Whether the writer must flush before it answers.
    pub fn needs_flush(self) -> bool {
        self.wait == Wait::Flushed
    }

    /// Waits (at most `timeout`) for the writer's answer to a queued append.
    pub async fn wait(
        self,
        rx: PendingAppend,
        timeout: Duration,
    ) -> Result<AppendOutcome, BrokerError> {
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(BrokerError::new(
                ErrorCode::RequestTimedOut,
                "ack level not reached in time; the records may still be written",
            )),
            Ok(Err(_)) => Err(BrokerError::new(ErrorCode::ShuttingDown, "shard closed")),
            Ok(Ok(r)) => r.map_err(append_error),
        }
    }
}

/// A writer's refusal as the client sees it.
pub fn append_error(e: AppendError) -> BrokerError {
    let code = match &e {
        AppendError::Storage(_) => ErrorCode::StorageError,
        AppendError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequence,
        AppendError::Fenced { .. } => ErrorCode::ProducerFenced,
        AppendError::Closed => ErrorCode::ShuttingDown,
        AppendError::LayoutChanged { .. } => ErrorCode::LayoutChanged,
    };
    BrokerError::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        let none = AckPlan::for_level(Acks::None, false).unwrap();
        assert!(!none.reply && !none.needs_flush());
        let leader = AckPlan::for_level(Acks::Leader, false).unwrap();
        assert!(leader.reply && !leader.needs_flush());
        let durable = AckPlan::for_level(Acks::Durable, false).unwrap();
        assert!(durable.reply && durable.needs_flush());
        let single = AckPlan::for_level(Acks::Mirrored, false).unwrap();
        assert!(single.needs_flush() && !single.mirrored);
        let cluster = AckPlan::for_level(Acks::Mirrored, true).unwrap();
        assert!(cluster.mirrored && !cluster.needs_flush());
    }

    #[tokio::test]
    async fn a_writer_that_never_answers_times_out_and_a_dropped_one_is_shutting_down() {
        let plan = AckPlan::for_level(Acks::Leader, false).unwrap();
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let e = plan.wait(rx, Duration::from_millis(1)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::RequestTimedOut);
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(tx);
        let e = plan.wait(rx, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ShuttingDown);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send(Err(AppendError::Closed)).unwrap();
        let e = plan.wait(rx, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ShuttingDown);
    }
}
