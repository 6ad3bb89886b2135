//! Idempotent producer ids: allocation, and the one broker-wide epoch per id that
//! fences old instances.
//!
//! Ids must never be handed out twice, even across restarts. The broker reserves
//! blocks of ids by writing the end of the reserved block to `producer_ids` in the data
//! directory (atomically) before handing any of them out; after a crash the unused rest
//! of a block is skipped, never reused. So an id at or above the next one to hand out
//! was never issued, before or after a restart: a Produce or InitProducerId naming one
//! is refused with UNKNOWN_PRODUCER_ID.
//!
//! **Fencing is per id, across every shard and class at once.** The newest epoch of each
//! id (raised by InitProducerId and by any batch that carries a newer one) lives here,
//! and a produced batch with an older epoch is PRODUCER_FENCED before it reaches any
//! shard, even a shard the new instance never wrote to. (Each shard's sequence lanes
//! still fence on their own, in the writer.) After a restart the table is rebuilt from
//! the newest epoch each shard's log holds for each id; a bump that no batch of the new
//! epoch followed before the restart is forgotten, and fencing resumes with that
//! instance's first write. Only ids whose epoch is above 0 take an entry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use weir_protocol::ErrorCode;

use crate::error::BrokerError;
use crate::files::write_atomically;

/// Ids reserved per write of the state file.
pub const BLOCK: u64 = 1000;
const FILE: &str = "producer_ids";

/// Hands out producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    dir: PathBuf,
    /// (next id to hand out, end of the reserved block); allocation only.
    state: Mutex<(u64, u64)>,
    /// The next id to hand out, read without the lock on every produced batch
    /// (stored after the block file is durable, so it never runs ahead of it).
    next: AtomicU64,
    /// Newest epoch of each id whose epoch is above 0.
    epochs: RwLock<HashMap<u64, u16>>,
    /// In a cluster, ids from `CLUSTER_PRODUCER_ID_BASE` up to this were handed out by
    /// the consensus engine (to any node); 0 on a single node.
    cluster_issued_below: AtomicU64,
}

impl ProducerIds {
    /// Loads the reserved-block mark from `dir`.
    pub fn open(dir: PathBuf) -> std::io::Result<ProducerIds> {
        let next = match std::fs::read_to_string(dir.join(FILE)) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{FILE}: {e}"))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        // The first id after a start needs a write: its blocks are taken now, while
        // there is space, so producers can start on a disk that fills up later.
        crate::files::keep_spare(&dir, FILE);
        Ok(ProducerIds {
            dir,
            state: Mutex::new((next, next)),
            next: AtomicU64::new(next),
            epochs: RwLock::new(HashMap::new()),
            cluster_issued_below: AtomicU64::new(0),
        })
    }

    /// Whether `id` was ever handed out (by this process or before a restart).
    fn issued(&self, id: u64) -> bool {
        if id >= crate::cluster::meta::CLUSTER_PRODUCER_ID_BASE {
            return id < self.cluster_issued_below.load(Ordering::Acquire);
        }
        id != 0 && id < self.next.load(Ordering::Acquire)
    }

    /// In a cluster: ids below `next` (from the cluster's range) were handed out by the
    /// consensus engine. Only raises the mark.
    pub fn set_cluster_issued_below(&self, next: u64) {
        self.cluster_issued_below.fetch_max(next, Ordering::AcqRel);
    }

    fn unknown(id: u64) -> BrokerError {
        BrokerError::new(
            ErrorCode::UnknownProducerId,
            format!(
                "producer id {id} was never issued by this broker; call InitProducerId with id 0"
            ),
        )
    }

    fn newest_epoch(&self, id: u64) -> u16 {
        let epochs = self.epochs.read().expect("producer epochs lock");
        epochs.get(&id).copied().unwrap_or(0)
    }

    /// Raises `id`'s newest epoch to `epoch` (never lowers it). Used on recovery with
    /// the epochs found in the logs, and by [`ProducerIds::admit`].
    pub fn observe(&self, id: u64, epoch: u16) {
        if epoch == 0 {
            return;
        }
        let mut epochs = self.epochs.write().expect("producer epochs lock");
        let e = epochs.entry(id).or_insert(0);
        *e = (*e).max(epoch);
    }

    /// The next epoch of an issued id: one above both the newest epoch the broker knows
    /// and the one the client had, so every older instance is fenced. `None` when the
    /// epochs are used up (the caller hands out a new id).
    pub fn bump(&self, id: u64, client_epoch: u16) -> Result<Option<u16>, BrokerError> {
        if !self.issued(id) {
            return Err(Self::unknown(id));
        }
        let mut epochs = self.epochs.write().expect("producer epochs lock");
        let e = epochs.entry(id).or_insert(0);
        let Some(next) = (*e).max(client_epoch).checked_add(1) else {
            return Ok(None);
        };
        *e = next;
        Ok(Some(next))
    }

    /// Whether a batch stamped (`id`, `epoch`) may be written: the id was issued and
    /// no newer epoch of it exists. Checks only: a newer epoch than the broker knows is
    /// recorded by [`ProducerIds::observe`] once the batch is queued, so a produce
    /// refused later (shed, too large) fences nobody. `id` 0 is "no producer".
    pub fn admit(&self, id: u64, epoch: u16) -> Result<(), BrokerError> {
        if id == 0 {
            return Ok(());
        }
        if !self.issued(id) {
            return Err(Self::unknown(id));
        }
        let newest = self.newest_epoch(id);
        if epoch < newest {
            return Err(BrokerError::new(
                ErrorCode::ProducerFenced,
                format!("producer {id} epoch {epoch} is fenced: epoch {newest} exists"),
            ));
        }
        Ok(())
    }

    /// A fresh id.
    pub fn allocate(&self) -> std::io::Result<u64> {
        let mut s = self.state.lock().expect("producer ids lock");
        if s.0 >= s.1 {
            let end = s.0 + BLOCK;
            write_atomically(&self.dir, FILE, end.to_string().as_bytes())?;
            s.1 = end;
        }
        let id = s.0;
        s.0 += 1;
        self.next.store(s.0, Ordering::Release);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = ProducerIds::open(dir.path().into()).unwrap();
        let first = a.allocate().unwrap();
        let second = a.allocate().unwrap();
        assert!(second > first);
        drop(a);
        let b = ProducerIds::open(dir.path().into()).unwrap();
        assert!(b.allocate().unwrap() > second);
    }

    /// Ids at or above the next one to hand out were never issued, also across a
    /// restart, where every id handed out before stays valid.
    #[test]
    fn ids_never_issued_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let a = ProducerIds::open(dir.path().into()).unwrap();
        let id = a.allocate().unwrap();
        a.admit(id, 0).unwrap();
        for made_up in [id + 1, id + 5, u64::MAX] {
            let e = a.admit(made_up, 0).unwrap_err();
            assert_eq!(e.code, ErrorCode::UnknownProducerId);
            assert_eq!(
                a.bump(made_up, 0).unwrap_err().code,
                ErrorCode::UnknownProducerId
            );
        }
        a.admit(0, 0).unwrap();
        drop(a);
        let b = ProducerIds::open(dir.path().into()).unwrap();
        b.admit(id, 0).unwrap();
        // After a restart the broker cannot tell which ids of the old block it handed
        // out, so all of them count as issued; ids past the block never were.
        b.admit(id + 1, 0).unwrap();
        assert_eq!(
            b.admit(id + BLOCK, 0).unwrap_err().code,
            ErrorCode::UnknownProducerId
        );
    }

    /// A bump fences every older epoch of the id at once; a bump from an old instance
    /// still goes past the newest; a newer epoch seen in a batch is taken up once the
    /// batch is queued (`observe`), not by the check alone.
    #[test]
    fn the_newest_epoch_fences_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let a = ProducerIds::open(dir.path().into()).unwrap();
        let id = a.allocate().unwrap();
        assert_eq!(a.bump(id, 0).unwrap(), Some(1));
        assert_eq!(a.admit(id, 0).unwrap_err().code, ErrorCode::ProducerFenced);
        a.admit(id, 1).unwrap();
        assert_eq!(
            a.bump(id, 0).unwrap(),
            Some(2),
            "past the newest, not the caller's"
        );
        assert!(a.admit(id, 1).is_err());
        a.admit(id, 7).unwrap();
        // Only checked: a produce refused after the check must fence nobody.
        a.admit(id, 2).unwrap();
        a.observe(id, 7);
        assert!(a.admit(id, 2).is_err());
        a.observe(id, 3);
        a.admit(id, 7).unwrap();
        a.observe(id, u16::MAX);
        assert_eq!(a.bump(id, 0).unwrap(), None, "epochs used up");
    }
}
