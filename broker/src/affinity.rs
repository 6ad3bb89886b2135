//! CPU affinity: pinning a thread to one CPU, and giving a thread the process's
//! original mask back.
//!
//! Used by the thread-per-core connection runtimes (`server::runtimes`) and by every
//! thread the broker starts from one of them (shard writers, flushers), which must not
//! inherit a core's pin. A leaf module so storage and shards need not import the server.

use std::sync::OnceLock;

/// The process's CPU mask before any thread was pinned, for [`unpin_current_thread`].
static ORIGINAL_MASK: OnceLock<libc::cpu_set_t> = OnceLock::new();

/// The CPUs the calling thread may run on, in order (also remembered as the mask that
/// unpinned threads get back).
pub fn allowed_cpus() -> Vec<usize> {
    let mask = ORIGINAL_MASK.get_or_init(|| {
        // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set; the
        // syscall writes at most `size_of::<cpu_set_t>()` bytes into it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                // Unknown: allow every CPU the set can name.
                for cpu in 0..libc::CPU_SETSIZE as usize {
                    libc::CPU_SET(cpu, &mut set);
                }
            }
            set
        }
    });
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: reads one bit of a plain-data set, cpu < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, mask) })
        .collect()
}

/// Gives the calling thread the process's original CPU mask back. A thread inherits
/// its creator's pinning, so threads started from a core thread (a shard writer made
/// by a CreateTopic request, its flush and segment threads, the core runtime's blocking
/// pool) call this first; otherwise they would all crowd onto that one core. Does
/// nothing when no runtime was ever pinned.
pub fn unpin_current_thread() {
    let Some(mask) = ORIGINAL_MASK.get() else {
        return;
    };
    // SAFETY: the syscall only reads the set, for the calling thread (pid 0).
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not unpin a thread");
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set; CPU_SET
    // writes one bit inside it (cpu < CPU_SETSIZE is checked first); the syscall only
    // reads the set, for the calling thread (pid 0).
    let rc = unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin a thread");
    }
}
