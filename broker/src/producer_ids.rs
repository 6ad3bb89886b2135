//! Allocation of idempotent producer ids.
//!
//! Ids must never be handed out twice, even across restarts. The broker reserves
//! blocks of ids by writing the end of the reserved block to `producer_ids` in the data
//! directory (atomically) before handing any of them out; after a crash the unused rest
//! of a block is skipped, never reused.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::files::write_atomically;

/// Ids reserved per write of the state file.
pub const BLOCK: u64 = 1000;
const FILE: &str = "producer_ids";

/// Hands out producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    dir: PathBuf,
    /// (next id to hand out, end of the reserved block)
    state: Mutex<(u64, u64)>,
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
        })
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
}
