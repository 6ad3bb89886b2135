//! Alerts: named conditions that fire and resolve, each transition logged once,
//! listed at `GET /alerts`, counted in `/metrics` and optionally POSTed to a webhook.
//!
//! `observe::run` lists, every second, the conditions that hold now ([`Condition`]);
//! the [`AlertBook`] compares them with the ones that held before and returns the
//! transitions. The same rules, for Alertmanager users, are in
//! `docs/alerts/weir-rules.yml`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The rules, as named in `/alerts`, `weir_alerts_*{rule}` and the rules file.
pub const RULES: &[&str] = &[
    "health_queues",
    "health_latency",
    "health_errors",
    "health_resources",
    "health_storage",
    "dead_letter",
    "breaker_open",
    "shedding",
    "consumer_lag_growing",
    "p0_latency",
    "disk_free_low",
    "mirror_out_of_sync",
];

/// Transitions kept for `/alerts` (newest last).
pub const HISTORY_MAX: usize = 100;

/// Most alerts firing at once; conditions beyond are dropped (and counted).
pub const FIRING_MAX: usize = 1000;

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// Unique per alert instance: the rule and its subject (`dead_letter:g/t`).
    pub id: String,
    pub rule: &'static str,
    /// `warning` or `critical`.
    pub severity: &'static str,
    pub message: String,
}

/// A firing alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    #[serde(flatten)]
    pub condition: Condition,
    /// When it fired (Unix ms).
    pub since_ms: i64,
}

/// A fire or a resolve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// `firing` or `resolved`.
    pub state: &'static str,
    #[serde(flatten)]
    pub condition: Condition,
    pub at_ms: i64,
}

/// Firing alerts, recent transitions and counts per rule.
#[derive(Debug, Default, Serialize)]
pub struct AlertBook {
    pub firing: BTreeMap<String, Alert>,
    pub recent: VecDeque<Transition>,
    /// Fires since start, per rule.
    pub fired_total: BTreeMap<&'static str, u64>,
}

impl AlertBook {
    /// Takes the conditions that hold now; returns what changed. A firing alert whose
    /// message or severity changes stays firing (no transition) with the new text.
    pub fn update(&mut self, now: Vec<Condition>, at_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut holding: BTreeMap<String, Condition> = BTreeMap::new();
        for c in now.into_iter().take(FIRING_MAX) {
            holding.insert(c.id.clone(), c);
        }
        let gone: Vec<String> = self
            .firing
            .keys()
            .filter(|id| !holding.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            let a = self.firing.remove(&id).expect("listed above");
            out.push(Transition {
                state: "resolved",
                condition: a.condition,
                at_ms,
            });
        }
        for (id, c) in holding {
            match self.firing.get_mut(&id) {
                Some(a) => a.condition = c,
                None => {
                    *self.fired_total.entry(c.rule).or_default() += 1;
                    out.push(Transition {
                        state: "firing",
                        condition: c.clone(),
                        at_ms,
                    });
                    self.firing.insert(
                        id,
                        Alert {
                            condition: c,
                            since_ms: at_ms,
                        },
                    );
                }
            }
        }
        for t in &out {
            if self.recent.len() == HISTORY_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back(t.clone());
        }
        out
    }

    /// Firing alerts per rule.
    pub fn firing_by_rule(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for a in self.firing.values() {
            *m.entry(a.condition.rule).or_default() += 1;
        }
        m
    }
}

/// Logs a transition (once: `update` returns each only once).
pub fn log(t: &Transition) {
    let c = &t.condition;
    match t.state {
        "firing" => {
            tracing::warn!(
                alert = c.id,
                rule = c.rule,
                severity = c.severity,
                "alert firing: {}",
                c.message
            )
        }
        _ => tracing::info!(alert = c.id, rule = c.rule, "alert resolved: {}", c.message),
    }
}

/// A webhook target parsed from `alert_webhook_url` (`http://host:port/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub host_port: String,
    pub path: String,
}

impl Webhook {
    /// `None` for "" or a URL this client cannot POST to.
    pub fn parse(url: &str) -> Option<Webhook> {
        let rest = url.strip_prefix("http://")?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host_port.is_empty() {
            return None;
        }
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:80")
        };
        Some(Webhook {
            host_port,
            path: path.to_string(),
        })
    }

    /// POSTs `body` (JSON) with HTTP/1.1 and waits for the status line, all within
    /// `timeout`. Returns the status code.
    pub async fn post(&self, body: &str, timeout: Duration) -> Result<u16, String> {
        let work = async {
            let mut s = tokio::net::TcpStream::connect(&self.host_port)
                .await
                .map_err(|e| e.to_string())?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.path,
                self.host_port,
                body.len()
            );
            s.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(body.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&buf[..n]);
            line.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(id: &str, rule: &'static str) -> Condition {
        Condition {
            id: id.into(),
            rule,
            severity: "warning",
            message: format!("{id} holds"),
        }
    }

    #[test]
    fn an_alert_fires_once_and_resolves_once() {
        let mut b = AlertBook::default();
        let t = b.update(vec![cond("dead_letter:g/t", "dead_letter")], 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].state, "firing");
        // Still holding: no new transition.
        assert!(b
            .update(vec![cond("dead_letter:g/t", "dead_letter")], 2)
            .is_empty());
        assert_eq!(b.firing["dead_letter:g/t"].since_ms, 1);
        let t = b.update(vec![], 3);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].state, "resolved");
        assert!(b.update(vec![], 4).is_empty());
        assert_eq!(b.fired_total["dead_letter"], 1);
        assert_eq!(b.recent.len(), 2);
        assert!(b.firing_by_rule().is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut b = AlertBook::default();
        for i in 0..(HISTORY_MAX as i64) {
            b.update(vec![cond("x", "shedding")], i * 2);
            b.update(vec![], i * 2 + 1);
        }
        assert_eq!(b.recent.len(), HISTORY_MAX);
        assert_eq!(b.fired_total["shedding"], HISTORY_MAX as u64);
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(
            Webhook::parse("http://127.0.0.1:9/hook"),
            Some(Webhook {
                host_port: "127.0.0.1:9".into(),
                path: "/hook".into()
            })
        );
        assert_eq!(Webhook::parse("http://h").unwrap().host_port, "h:80");
        assert_eq!(Webhook::parse("https://h/x"), None);
        assert_eq!(Webhook::parse(""), None);
        assert_eq!(Webhook::parse("http:///x"), None);
    }

    #[tokio::test]
    async fn webhook_posts_json_and_reads_the_status() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).ends_with("}") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let hook = Webhook::parse(&format!("http://{addr}/a")).unwrap();
        let code = hook
            .post("{\"a\":1}", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(code, 204);
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /a HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    }
}
