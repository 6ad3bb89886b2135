//! Disk space set aside for a catch-up before it starts.
//!
//! A copy that catches up writes, in a few seconds, as much as its primary took over
//! hours; if another shard (or another process) takes the disk meanwhile, the copy
//! stops half way and every shard of the node with it. So once the disk has room for
//! the whole catch-up (`mirror::wait_for_room`), that room is allocated to a file in
//! the shard's directory (`posix_fallocate`, real blocks, not a sparse length) and
//! given back as the copy's own segments take it: the file shrinks by what each fetch
//! wrote, and goes when the copy is caught up (or its task ends). A node that died
//! catching up leaves the file behind; the next mirror task of the shard removes it.
//! Segment files ignore it (their names are 20-digit offsets).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The reservation's file name in the shard's directory.
pub const FILE: &str = "catch-up.reserve";

/// Allocated disk space; freed when dropped.
#[derive(Debug)]
pub struct Reservation {
    file: File,
    path: PathBuf,
    bytes: u64,
}

impl Reservation {
    /// Allocates `bytes` in `dir` (nothing for 0).
    pub fn take(dir: &Path, bytes: u64) -> io::Result<Reservation> {
        let path = dir.join(FILE);
        let file = File::create(&path)?;
        if bytes > 0 {
            let len = libc::off_t::try_from(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "reservation too large")
            })?;
            // SAFETY: the descriptor is the file just opened for writing, owned by
            // `file` for the whole call; posix_fallocate touches nothing else.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
            if rc != 0 {
                let _ = std::fs::remove_file(&path);
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        Ok(Reservation { file, path, bytes })
    }

    /// Gives back `written` bytes (what the copy's own segments just took).
    pub fn shrink_by(&mut self, written: u64) {
        let left = self.bytes.saturating_sub(written);
        if left < self.bytes && self.file.set_len(left).is_ok() {
            self.bytes = left;
        }
    }

    /// Bytes still set aside.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
    }

    #[test]
    fn space_is_allocated_then_given_back_then_freed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut r = Reservation::take(dir.path(), 4 << 20).unwrap();
        assert!(
            allocated(&path) >= 4 << 20,
            "real blocks, not a sparse file"
        );
        r.shrink_by(3 << 20);
        assert_eq!(r.bytes(), 1 << 20);
        assert!(allocated(&path) < 2 << 20);
        r.shrink_by(8 << 20);
        assert_eq!(r.bytes(), 0);
        drop(r);
        assert!(!path.exists());
    }
}
