//! Transparent huge pages for the process's own memory: off by default in the
//! `weir-broker` binary (`transparent_huge_pages = false`) and in `weir-bench`.
//!
//! The allocator (mimalloc) asks the kernel for 2 MiB pages for its arenas. The first
//! touch of such a page makes the kernel find and zero 2 MiB in one page fault, on the
//! thread that touched it. On a VM that hands free memory back to its host, that
//! fault costs milliseconds (about 30 µs per 4 KiB the host must supply again, so up
//! to ~15 ms for one huge page; BENCHMARKS.md, "Session 18"), and it lands on
//! whichever writer, connection or SDK thread touched the page: a tail-latency spike.
//! (Redis also turns them off for itself by default, `disable-thp`, for latency.) A
//! leaf module: the binaries call it before they start any thread. The embedded
//! broker leaves the process's memory policy to the program that embeds it.

/// Turns transparent huge pages off for the whole process (`PR_SET_THP_DISABLE`,
/// kept across `fork` and `exec`): later page faults get base pages, so a first
/// touch costs one 4 KiB page, never a 2 MiB one. Pages already huge stay huge.
pub fn disable_for_process() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of
    // this process's memory descriptor; it touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1u64, 0u64, 0u64, 0u64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are turned off for this process
/// (`PR_GET_THP_DISABLE`); `None` when the kernel cannot say.
pub fn disabled_for_process() -> Option<bool> {
    // SAFETY: PR_GET_THP_DISABLE takes no pointer and returns the flag.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0u64, 0u64, 0u64, 0u64) };
    (rc >= 0).then_some(rc == 1)
}

/// Applies the `transparent_huge_pages` setting: `false` turns them off for the
/// process, `true` leaves the kernel's policy as it is. Logs what was done.
pub fn apply(allowed: bool) {
    if allowed {
        return;
    }
    match disable_for_process() {
        Ok(()) => tracing::info!(
            "transparent huge pages off for this process (transparent_huge_pages = false)"
        ),
        Err(e) => tracing::warn!(
            "could not turn transparent huge pages off (transparent_huge_pages = false): {e}"
        ),
    }
}
