//! The broker process's CPU, memory and open files, and its data directory's disk,
//! read from `/proc/self` and `statvfs` when `/metrics` or the health check asks.
//!
//! Linux only, like the rest of the broker; a figure that cannot be read is left out
//! rather than reported as zero.

use std::path::Path;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    /// Resident anonymous memory (heap, stacks; not the page cache of mapped files).
    pub anonymous_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft limit on open files.
    pub max_fds: Option<u64>,
    /// 0 when transparent huge pages are wholly off for this process
    /// (`transparent_huge_pages`, `crate::huge_pages`), 1 when the system policy
    /// applies to it.
    pub transparent_huge_pages: Option<u64>,
}

/// The filesystem that holds a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub total_bytes: u64,
    /// Free for an unprivileged writer (`f_bavail`), what the broker can still use.
    pub free_bytes: u64,
    pub used_bytes: u64,
}

impl DiskStats {
    /// Used share of the filesystem in percent, as `df` computes it: used over used
    /// plus free-for-unprivileged (blocks reserved for root count as neither).
    pub fn used_percent(&self) -> f64 {
        let usable = self.used_bytes + self.free_bytes;
        if usable == 0 {
            0.0
        } else {
            100.0 * self.used_bytes as f64 / usable as f64
        }
    }
}

/// Reads this process's figures.
pub fn process() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    ProcessStats {
        cpu_seconds: cpu_seconds(),
        resident_bytes: status_kib(&status, "VmRSS:"),
        anonymous_bytes: status_kib(&status, "RssAnon:"),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: max_fds(),
        transparent_huge_pages: crate::huge_pages::disabled_for_process()
            .map(|off| u64::from(!off)),
    }
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of `/proc/self/stat`, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The filesystem holding `dir`, or `None` when it cannot be asked.
pub fn disk(dir: &Path) -> Option<DiskStats> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value for statvfs to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    let total = st.f_blocks as u64 * block;
    let free_all = st.f_bfree as u64 * block;
    Some(DiskStats {
        total_bytes: total,
        free_bytes: st.f_bavail as u64 * block,
        used_bytes: total.saturating_sub(free_all),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_memory_and_files() {
        let p = process();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.anonymous_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let d = disk(Path::new("/")).unwrap();
        assert!(d.total_bytes > 0 && d.free_bytes <= d.total_bytes);
        assert!((0.0..=100.0).contains(&d.used_percent()));
        assert_eq!(disk(Path::new("/no/such/dir")), None);
    }
}
