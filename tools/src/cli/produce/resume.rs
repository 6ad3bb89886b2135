//! `weir produce --producer-id-file FILE`: one idempotent producer id kept across
//! runs, so a run cut short (killed, broker gone, connection lost) can be re-run on
//! the same input without storing any line twice.
//!
//! The file holds the producer id, its newest epoch, and a checkpoint rewritten (by
//! rename) every second and at exit: `lines_done` — every line up to it was stored
//! or skipped by the bad-line rule — a hash of those lines, and per shard an offset
//! at or below every record the id stored for a later line (the shard's end when the
//! run started, raised past each acknowledged line up to `lines_done`; records of one
//! shard are stored in send order, since every line has the same priority class).
//!
//! A re-run starts with the next epoch of the id (fencing a previous run still
//! sending), checks that its input starts with the same `lines_done` lines, skips
//! them, and reads each shard from its checkpoint offset to its end, keeping the
//! records whose batch carries the id: those are lines after the checkpoint that an
//! earlier run stored, whatever it was told. Each later line whose value (and key,
//! when the line sets one) matches such a record is reported as stored earlier at
//! that offset and not sent again; the rest are sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use weir_client::{Admin, Client};
use weir_protocol::batch::Batch;
use weir_protocol::messages::FetchRequest;
use weir_protocol::ResponseBody;

/// Most records of the id a re-run holds from its scan (they are the lines stored
/// after the last checkpoint: about a second of sending plus those in flight).
const SCAN_RECORDS_MAX: usize = 1_000_000;
/// Bytes one fetch of the scan asks for.
const SCAN_FETCH_BYTES: u32 = 1 << 20;
const VERSION: u32 = 1;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// The input hash of no lines.
pub const HASH_START: u64 = FNV_OFFSET;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The contents of a producer-id file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    pub topic: String,
    pub producer_id: u64,
    pub epoch: u16,
    /// Lines `1..=lines_done` are stored or were skipped.
    pub lines_done: u64,
    /// [`fold`] of the hashes of lines `1..=lines_done`.
    pub input_hash: u64,
    /// Per shard: no record the id stored for a line after `lines_done` is below it.
    pub since: BTreeMap<u32, u64>,
}

/// FNV-1a of one input line as read (stable across builds and platforms).
pub fn line_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The running hash of the lines so far, extended by one line's [`line_hash`].
pub fn fold(h: u64, line: u64) -> u64 {
    (h.rotate_left(5) ^ line).wrapping_mul(FNV_PRIME)
}

impl ResumeState {
    /// A new file's state: nothing done, `since` at the shards' ends now.
    pub fn new(topic: &str, producer_id: u64, epoch: u16, ends: &BTreeMap<u32, u64>) -> Self {
        ResumeState {
            topic: topic.to_string(),
            producer_id,
            epoch,
            lines_done: 0,
            input_hash: HASH_START,
            since: ends.clone(),
        }
    }

    /// Reads `path`; `None` when it does not exist yet.
    pub fn load(path: &Path) -> anyhow::Result<Option<ResumeState>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(
                Self::parse(&text).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    }

    fn parse(text: &str) -> anyhow::Result<ResumeState> {
        let mut fields = HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            fields.insert(k, v.trim());
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .with_context(|| format!("no `{k}` line"))
        };
        let num = |k: &str| -> anyhow::Result<u64> {
            get(k)?
                .parse()
                .with_context(|| format!("`{k}` is not a number"))
        };
        if num("version")? != u64::from(VERSION) {
            bail!("unknown version {}", get("version")?);
        }
        let mut since = BTreeMap::new();
        for pair in get("since")?.split_whitespace() {
            let (s, o) = pair
                .split_once('=')
                .context("`since` holds SHARD=OFFSET pairs")?;
            since.insert(
                s.parse().context("`since`: bad shard")?,
                o.parse().context("`since`: bad offset")?,
            );
        }
        Ok(ResumeState {
            topic: get("topic")?.to_string(),
            producer_id: num("producer_id")?,
            epoch: u16::try_from(num("epoch")?).context("`epoch` is over 65535")?,
            lines_done: num("lines_done")?,
            input_hash: u64::from_str_radix(get("input_hash")?, 16)
                .context("`input_hash` is not hex")?,
            since,
        })
    }

    fn render(&self) -> String {
        let since: Vec<String> = self.since.iter().map(|(s, o)| format!("{s}={o}")).collect();
        format!(
            "# weir produce --producer-id-file: the producer id this input is sent with and\n\
             # how far it got. Re-run with the same file and the same input to resume.\n\
             version {VERSION}\ntopic {}\nproducer_id {}\nepoch {}\nlines_done {}\n\
             input_hash {:016x}\nsince {}\n",
            self.topic,
            self.producer_id,
            self.epoch,
            self.lines_done,
            self.input_hash,
            since.join(" ")
        )
    }

    /// Replaces `path` atomically (a temporary file beside it, synced, renamed).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    }

    /// What to write to the file: `since` lowered to the records of `held` not yet
    /// matched (a later line stored by an earlier run may sit below offsets this run
    /// acknowledged on the same shard; the next scan must still find it).
    pub fn checkpoint(&self, held: &StoredEarlier) -> ResumeState {
        let mut out = self.clone();
        for list in held.by_value.values() {
            for (_, shard, offset) in list {
                let s = out.since.entry(*shard).or_insert(*offset);
                *s = (*s).min(*offset);
            }
        }
        out
    }

    /// A line settled in order: stored at `at` (shard, offset), or skipped (`None`).
    pub fn settle(&mut self, line_hash: u64, at: Option<(u32, u64)>) {
        self.lines_done += 1;
        self.input_hash = fold(self.input_hash, line_hash);
        if let Some((shard, offset)) = at {
            let s = self.since.entry(shard).or_insert(0);
            *s = (*s).max(offset + 1);
        }
    }
}

/// Records the id stored after the checkpoint, by value, in offset order per shard.
#[derive(Debug, Default)]
pub struct StoredEarlier {
    by_value: HashMap<Bytes, VecDeque<(Bytes, u32, u64)>>,
    /// Records held.
    pub count: usize,
}

impl StoredEarlier {
    /// Takes the first held record with `value` (and `key`, when given): where an
    /// earlier run stored this line.
    pub fn take(&mut self, key: Option<&Bytes>, value: &Bytes) -> Option<(u32, u64)> {
        let list = self.by_value.get_mut(value)?;
        let i = match key {
            Some(k) => list.iter().position(|(rk, _, _)| rk == k)?,
            None => 0,
        };
        let (_, shard, offset) = list.remove(i)?;
        if list.is_empty() {
            self.by_value.remove(value);
        }
        self.count -= 1;
        Some((shard, offset))
    }
}

/// Reads every shard of `topic` from `since` (or its log start, for a shard not in
/// it) to its end now, keeping the records whose batch carries `producer_id`.
pub async fn scan(
    client: &Client,
    topic: &str,
    producer_id: u64,
    since: &BTreeMap<u32, u64>,
) -> anyhow::Result<StoredEarlier> {
    let meta = Admin::new(client.clone())
        .describe_topic(topic)
        .await
        .with_context(|| format!("no topic {topic}"))?;
    let mut out = StoredEarlier::default();
    for s in &meta.shards {
        let mut at = since
            .get(&s.shard)
            .copied()
            .unwrap_or(0)
            .max(s.log_start_offset);
        while at < s.high_watermark {
            let req = FetchRequest {
                topic: topic.to_string(),
                shard: s.shard,
                offset: at,
                max_bytes: SCAN_FETCH_BYTES,
                min_bytes: 0,
                max_wait_ms: 0,
            };
            let resp = match client.call(req).await? {
                ResponseBody::Fetch(f) => f,
                other => bail!("unexpected response {:?}", other.api_key()),
            };
            let before = at;
            for b in resp.records.batches() {
                let batch = Batch::parse(b?)?;
                let h = *batch.header();
                let end = h.base_offset + u64::from(h.record_count);
                if h.producer_id == producer_id && end > at {
                    for r in batch.records() {
                        if r.offset < at || r.offset >= s.high_watermark {
                            continue;
                        }
                        out.by_value.entry(r.value.clone()).or_default().push_back((
                            r.key.clone(),
                            s.shard,
                            r.offset,
                        ));
                        out.count += 1;
                    }
                    if out.count > SCAN_RECORDS_MAX {
                        bail!(
                            "more than {SCAN_RECORDS_MAX} records of producer id {producer_id} \
                             after the checkpoint; this file does not belong to this topic's \
                             recent history"
                        );
                    }
                }
                at = at.max(end);
            }
            if at == before {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_reads_back_what_was_written() {
        let ends = BTreeMap::from([(0, 10), (1, 0)]);
        let mut st = ResumeState::new("orders", 42, 3, &ends);
        st.settle(line_hash(b"a"), Some((1, 7)));
        st.settle(line_hash(b"bad"), None);
        assert_eq!(st.lines_done, 2);
        assert_eq!(st.since, BTreeMap::from([(0, 10), (1, 8)]));
        assert_eq!(ResumeState::parse(&st.render()).unwrap(), st);
        assert!(ResumeState::parse("version 9\n").is_err());
    }

    #[test]
    fn the_input_hash_depends_on_order_and_content() {
        let h = |lines: &[&[u8]]| lines.iter().fold(FNV_OFFSET, |h, l| fold(h, line_hash(l)));
        assert_ne!(h(&[b"a", b"b"]), h(&[b"b", b"a"]));
        assert_ne!(h(&[b"ab"]), h(&[b"a", b"b"]));
        assert_eq!(h(&[b"a", b"b"]), h(&[b"a", b"b"]));
    }

    #[test]
    fn stored_records_are_matched_by_value_and_key() {
        let mut s = StoredEarlier::default();
        let v = Bytes::from_static(b"v");
        s.by_value.insert(
            v.clone(),
            VecDeque::from([
                (Bytes::from_static(b"k1"), 0, 5),
                (Bytes::from_static(b"k2"), 1, 9),
            ]),
        );
        s.count = 2;
        assert_eq!(s.take(Some(&Bytes::from_static(b"k2")), &v), Some((1, 9)));
        assert_eq!(s.take(Some(&Bytes::from_static(b"k2")), &v), None);
        let st = ResumeState::new("t", 1, 0, &BTreeMap::from([(0, 100), (1, 100)]));
        assert_eq!(st.checkpoint(&s).since, BTreeMap::from([(0, 5), (1, 100)]));
        assert_eq!(s.take(None, &v), Some((0, 5)));
        assert_eq!(s.take(None, &v), None);
        assert_eq!(s.count, 0);
    }
}
