//! Group membership: joining (and re-joining after a rebalance), the heartbeat task,
//! and committing positions.
//!
//! The heartbeat runs in its own task and never touches the consumer's state: it only
//! raises the `rejoin` flag, which the next `poll` acts on. A consumer outside a group
//! (`assign`ed shards, or every shard of its topics) goes through the same re-join
//! step to (re)set its positions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_protocol::messages::*;
use weir_protocol::{ErrorCode, ResponseBody};

use super::Consumer;
use crate::client::expect_body;
use crate::error::{ClientError, Result};

/// This consumer's identity in its group, until the next rebalance.
#[derive(Debug, Clone)]
pub(super) struct Membership {
    member_id: String,
    generation: u32,
}

impl Consumer {
    /// Commits if auto-commit is on and the interval has passed (errors are logged).
    pub(super) async fn maybe_auto_commit(&mut self) {
        if self.config.auto_commit
            && self.config.group.is_some()
            && self.last_commit.elapsed() >= self.config.auto_commit_interval
        {
            if let Err(e) = self.commit().await {
                tracing::debug!(error = %e, "auto-commit failed");
            }
        }
    }

    /// The commit of every position returned so far, as this member (or as a consumer
    /// outside group management when it has not joined). `None` without a group.
    fn commit_request(&self) -> Option<CommitOffsetsRequest> {
        let group = self.config.group.clone()?;
        let (member_id, generation) = match &self.membership {
            Some(m) => (m.member_id.clone(), m.generation),
            None => (String::new(), 0),
        };
        Some(CommitOffsetsRequest {
            group,
            member_id,
            generation,
            offsets: self.positions(),
        })
    }

    /// Commits the positions of every message returned so far and waits until the
    /// broker has stored them durably.
    pub async fn commit(&mut self) -> Result<()> {
        let req = self
            .commit_request()
            .ok_or_else(|| ClientError::Invalid("commit needs a group".into()))?;
        self.last_commit = tokio::time::Instant::now();
        let body = self.client.call(req).await;
        if let Err(e) = &body {
            if must_rejoin(e) {
                self.rejoin.store(true, Ordering::Release);
            }
        }
        expect_body!(body?, CommitOffsets).map(|_| ())
    }

    /// Commits in the background; errors are logged.
    pub fn commit_async(&self) {
        let Some(req) = self.commit_request() else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.call(req).await {
                tracing::warn!(error = %e, "async commit failed");
            }
        });
    }

    /// Leaves the group (committing first when auto-commit is on).
    pub async fn close(mut self) -> Result<()> {
        if self.config.auto_commit && self.membership.is_some() {
            let _ = self.commit().await;
        }
        if let (Some(group), Some(m)) = (self.config.group.clone(), self.membership.take()) {
            let req = LeaveGroupRequest {
                group,
                member_id: m.member_id,
            };
            let _ = self.client.call(req).await;
        }
        Ok(())
    }

    /// Drops everything fetched, finds this consumer's shards again and starts each at
    /// its committed offset (or the reset policy's).
    pub(super) async fn rejoin_group(&mut self) -> Result<()> {
        self.buffered.clear();
        self.buffered_lanes.clear();
        self.batches.clear();
        // Positions come from the group's commits again; lane state of the old
        // assignment must not move them.
        self.lanes.clear();
        self.lane_floors.clear();
        let shards = self.assigned_shards().await?;
        self.positions.clear();
        let mut topics: Vec<String> = shards.iter().map(|(t, _)| t.clone()).collect();
        topics.extend(self.topics.iter().cloned());
        topics.sort();
        topics.dedup();
        self.others_at = None;
        if !topics.is_empty() {
            self.learn_layouts(&topics, false).await?;
        }
        // Every shard's commit, not just this member's: whether the group read a topic
        // before a reshard decides where a new shard is started (`reshard_start`).
        let mut asked = shards.clone();
        for (topic, l) in &self.layouts {
            if !l.reshards.is_empty() {
                asked.extend((0..l.log_starts.len() as u32).map(|s| (topic.clone(), s)));
            }
        }
        asked.sort();
        asked.dedup();
        let committed = self.committed_offsets(&asked).await?;
        for (topic, shard) in shards {
            let key = (topic.clone(), shard);
            // A start offset applies once, at the first assignment of its shard (taken
            // out below, once every position of this assignment is known).
            let start = self.config.start_offsets.get(&key).copied();
            let pos = match start.or_else(|| committed.get(&key).copied()) {
                Some(o) => o,
                None => match self.reshard_start(&topic, shard, &committed) {
                    Some(o) => o,
                    None => self.reset_position(&topic, shard).await?,
                },
            };
            self.positions.insert((topic, shard), pos);
        }
        let assigned: Vec<_> = self.positions.keys().cloned().collect();
        for key in assigned {
            self.config.start_offsets.remove(&key);
        }
        self.rejoin.store(false, Ordering::Release);
        Ok(())
    }

    /// The shards to read: those given to `assign`, every shard of the topics
    /// without a group, or what the group assigns this member.
    async fn assigned_shards(&mut self) -> Result<Vec<(String, u32)>> {
        match (&self.config.group, &self.manual) {
            (_, Some(manual)) => Ok(manual.clone()),
            (None, None) => {
                let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                let meta = self.client.metadata(&topics).await?;
                Ok(meta
                    .topics
                    .iter()
                    .flat_map(|t| t.shards.iter().map(|s| (t.name.clone(), s.shard)))
                    .collect())
            }
            (Some(group), None) => {
                let group = group.clone();
                self.join_group(group).await
            }
        }
    }

    /// Joins `group` (committing first if auto-commit is on and this was a member),
    /// starts the heartbeat, and returns the assigned shards.
    async fn join_group(&mut self, group: String) -> Result<Vec<(String, u32)>> {
        if self.config.auto_commit && self.membership.is_some() {
            let _ = self.commit().await;
        }
        let previous = self
            .membership
            .as_ref()
            .map(|m| m.member_id.clone())
            .unwrap_or_default();
        let req = JoinGroupRequest {
            group: group.clone(),
            member_id: previous,
            client_id: "weir-consumer".into(),
            topics: self.topics.clone(),
            session_timeout_ms: self.config.session_timeout.as_millis() as u32,
            rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
        };
        let timeout = self.config.rebalance_timeout + self.client.config().request_timeout;
        let body = match self
            .client
            .call_with_timeout(req.clone().into(), timeout)
            .await
        {
            // The broker forgot this member (session expired): join as a new one.
            Err(e) if e.code() == Some(ErrorCode::UnknownMemberId) => {
                let fresh = JoinGroupRequest {
                    member_id: String::new(),
                    ..req
                };
                self.client.call_with_timeout(fresh.into(), timeout).await?
            }
            other => other?,
        };
        let resp: JoinGroupResponse = expect_body!(body, JoinGroup)?;
        self.membership = Some(Membership {
            member_id: resp.member_id.clone(),
            generation: resp.generation,
        });
        self.start_heartbeat(group, resp.member_id.clone(), resp.generation);
        Ok(resp
            .assignment
            .iter()
            .flat_map(|a| a.shards.iter().map(|s| (a.topic.clone(), *s)))
            .collect())
    }

    /// The group's committed offsets of `shards` (none without a group).
    async fn committed_offsets(
        &self,
        shards: &[(String, u32)],
    ) -> Result<HashMap<(String, u32), u64>> {
        let Some(group) = &self.config.group else {
            return Ok(HashMap::new());
        };
        let req = FetchOffsetsRequest {
            group: group.clone(),
            shards: shards
                .iter()
                .map(|(t, s)| ShardRef {
                    topic: t.clone(),
                    shard: *s,
                })
                .collect(),
        };
        Ok(expect_body!(self.client.call(req).await?, FetchOffsets)?
            .offsets
            .into_iter()
            .map(|e| ((e.topic, e.shard), e.offset))
            .collect())
    }

    /// Replaces the heartbeat task: every quarter session it tells the broker this
    /// member is alive, and raises `rejoin` when the broker says the group moved on.
    fn start_heartbeat(&mut self, group: String, member_id: String, generation: u32) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let client = self.client.clone();
        let flag = self.rejoin.clone();
        let every = (self.config.session_timeout / 4).max(Duration::from_millis(50));
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let req = HeartbeatRequest {
                    group: group.clone(),
                    member_id: member_id.clone(),
                    generation,
                };
                match client.call(req).await {
                    Ok(ResponseBody::Heartbeat(_)) => {}
                    Err(e) if must_rejoin(&e) => {
                        flag.store(true, Ordering::Release);
                        return;
                    }
                    other => tracing::debug!(?other, "heartbeat failed"),
                }
            }
        }));
    }
}

/// Whether the broker's answer means this member must re-join its group.
fn must_rejoin(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::RebalanceInProgress
                | ErrorCode::IllegalGeneration
                | ErrorCode::UnknownMemberId
        )
    )
}
