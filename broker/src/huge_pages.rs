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
//! leaf module: the binaries call it early in `main`; pages touched before the call
//! stay as they are. The embedded broker leaves the process's memory policy to the
//! program that embeds it.

/// Sets or clears the process's "THP disable" flag (`PR_SET_THP_DISABLE`, kept across
/// `fork` and `exec`). Set: later page faults get base pages, so a first touch costs
/// one 4 KiB page, never a 2 MiB one. Cleared: the kernel's system-wide policy
/// applies again (a flag inherited from a parent process is dropped).
pub fn set_disabled_for_process(disabled: bool) -> std::io::Result<()> {
    let flag: libc::c_ulong = disabled.into();
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only (passed as the
    // `unsigned long`s the kernel reads) and changes a flag of this process's memory
    // descriptor; it touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, flag, zero, zero, zero) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Turns transparent huge pages off for the whole process.
pub fn disable_for_process() -> std::io::Result<()> {
    set_disabled_for_process(true)
}

/// Whether transparent huge pages are wholly off for this process
/// (`PR_GET_THP_DISABLE` returns 1); `None` when the kernel cannot say. The kernel
/// returns 3 for "off except where the program asked for them" (`madvise`), which
/// is not off for us: the allocator asks for them.
pub fn disabled_for_process() -> Option<bool> {
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_GET_THP_DISABLE takes no pointer and returns the flag bits.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, zero, zero, zero, zero) };
    (rc >= 0).then_some(rc == 1)
}

/// Applies the `transparent_huge_pages` setting: `false` turns them off for the
/// process, `true` clears the flag so the kernel's own policy applies. Logs what was
/// done.
pub fn apply(allowed: bool) {
    match set_disabled_for_process(!allowed) {
        Ok(()) if !allowed => tracing::info!(
            "transparent huge pages off for this process (transparent_huge_pages = false)"
        ),
        Ok(()) => {}
        Err(e) => tracing::warn!(
            allowed,
            "could not set transparent huge pages for this process (transparent_huge_pages): {e}"
        ),
    }
}
