//! Small files replaced whole and crash-safely (topic list, producer-id block).
//!
//! Each file keeps a spare, `<name>.tmp`, with its blocks already allocated: the next
//! replacement writes into the spare and renames it over the file, and a new spare is
//! made right after from the blocks the old file just gave back. So a full disk does
//! not stop a replacement that fits in the spare (the first producer id of a broker
//! started on a full disk, say), as long as nothing else takes those blocks between.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Blocks kept allocated in a spare: one page holds the producer-id mark and a topic
/// list of dozens of topics.
const SPARE_BYTES: u64 = 4096;

/// Replaces `dir/name` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        // The spare if there is one (no truncation: its blocks stay allocated); the
        // length is cut to exactly `bytes` after they are written.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_len(bytes.len() as u64)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    keep_spare(dir, name);
    Ok(())
}

/// Makes sure `dir/<name>.tmp` exists with its first page of blocks allocated, for
/// the next [`write_atomically`]. Best effort: without it the next replacement needs
/// free space, as any write does; a larger replacement needs space for the rest.
pub fn keep_spare(dir: &Path, name: &str) {
    let tmp = dir.join(format!("{name}.tmp"));
    let made = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&tmp)
        .and_then(|f| {
            // SAFETY: plain syscall on a descriptor we own; no memory is passed.
            // FALLOC_FL_KEEP_SIZE: blocks without a length, so the spare reads empty.
            let rc = unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    SPARE_BYTES as libc::off_t,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    if let Err(e) = made {
        tracing::warn!(file = %tmp.display(), error = %e, "cannot keep a spare for the next replacement");
    }
}
