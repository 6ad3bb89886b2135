//! The storage engine's background workers: one bounded, process-wide pool of threads
//! that runs every log's background file work (group-commit and interval flushes,
//! preparing the next segment, deleting segments retention removed).
//!
//! Why a pool and not a thread per job: with thousands of shards a thread per flush
//! multiplies threads by the flush rate, and a thread that cannot start is a failure
//! no caller can do anything about. Here threads are started on demand up to
//! [`set_max_threads`] (default [`DEFAULT_MAX_THREADS`]) and then reused; when a new
//! one cannot be started the job waits for a running one, and when there is none at
//! all the job runs on the caller's thread. So a failed spawn costs latency, never
//! a log and never the process.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};

use super::error::StorageError;

/// Default bound on the pool's threads: flushes of that many shards run at once,
/// more than one disk serves in parallel, and few enough to stay far below thread
/// limits.
pub const DEFAULT_MAX_THREADS: usize = 16;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    state: Mutex<State>,
    work: Condvar,
    max_threads: AtomicUsize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Spawns that failed since the last successful one (for tests and the log line).
    spawn_failures: u64,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        work: Condvar::new(),
        max_threads: AtomicUsize::new(DEFAULT_MAX_THREADS),
    })
}

/// Sets the most threads the pool starts (at least 1); threads already running stay.
pub fn set_max_threads(n: usize) {
    pool().max_threads.store(n.max(1), Ordering::Relaxed);
}

/// Threads the pool runs now.
pub fn threads() -> usize {
    lock(&pool().state).threads
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Jobs run outside the lock, so a poisoned lock only means a panic in this
    // module's own short critical sections; the state is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
thread_local! {
    /// Tests make spawning fail on their own thread to exercise the fallbacks.
    pub(crate) static FAIL_SPAWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn spawn_worker() -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_SPAWN.with(|f| f.get()) {
        return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
    }
    std::thread::Builder::new()
        .name("weir-storage".into())
        .spawn(worker_loop)
        .map(drop)
}

fn worker_loop() {
    // Started from whichever thread submitted a job (a pinned core thread's blocking
    // work, say): serve every core, like the shard writers.
    crate::affinity::unpin_current_thread();
    let p = pool();
    let mut st = lock(&p.state);
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job();
            st = lock(&p.state);
            continue;
        }
        st.idle += 1;
        st = p.work.wait(st).unwrap_or_else(|e| e.into_inner());
        st.idle -= 1;
    }
}

/// The outcome of a job handed to the pool.
pub(crate) struct Task<T> {
    rx: mpsc::Receiver<std::thread::Result<T>>,
    done: Option<std::thread::Result<T>>,
}

impl<T> Task<T> {
    /// Whether the job has finished (its outcome is kept for [`Task::join`]).
    pub(crate) fn is_finished(&mut self) -> bool {
        if self.done.is_none() {
            match self.rx.try_recv() {
                Ok(r) => self.done = Some(r),
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => return true,
            }
        }
        true
    }

    /// Waits for the job. `what` names it in the error a panicking job becomes.
    pub(crate) fn join(mut self, what: &str) -> Result<T, StorageError> {
        let r = match self.done.take() {
            Some(r) => Some(r),
            None => self.rx.recv().ok(),
        };
        match r {
            Some(Ok(v)) => Ok(v),
            _ => Err(StorageError::Failed(format!("{what} panicked"))),
        }
    }
}

/// Runs `f` on a pool thread (on this thread when no pool thread exists and none can
/// be started) and returns its outcome's handle. Never fails.
pub(crate) fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    let p = pool();
    let mut st = lock(&p.state);
    st.queue.push_back(job);
    if st.idle >= st.queue.len() {
        p.work.notify_one();
    } else if st.threads < p.max_threads.load(Ordering::Relaxed) {
        match spawn_worker() {
            Ok(()) => {
                st.threads += 1;
                st.spawn_failures = 0;
            }
            Err(e) => {
                st.spawn_failures += 1;
                if st.spawn_failures == 1 {
                    tracing::warn!(error = %e, threads = st.threads, "cannot start a storage worker thread; jobs wait for running ones");
                }
                if st.threads == 0 {
                    // Nobody would ever run it: run it here, now.
                    let job = st.queue.pop_back().expect("just pushed");
                    drop(st);
                    job();
                    return Task { rx, done: None };
                }
                p.work.notify_one();
            }
        }
    }
    Task { rx, done: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_even_when_no_thread_can_be_started() {
        FAIL_SPAWN.with(|f| f.set(true));
        let before = threads();
        let t = run(|| 7);
        assert_eq!(t.join("job").unwrap(), 7);
        if before == 0 {
            assert_eq!(threads(), 0, "no thread was started");
        }
        FAIL_SPAWN.with(|f| f.set(false));
    }

    #[test]
    fn the_pool_never_exceeds_its_bound_and_runs_every_job() {
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                run(move || {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    i
                })
            })
            .collect();
        let sum: u64 = tasks.into_iter().map(|t| t.join("job").unwrap()).sum();
        assert_eq!(sum, (0..200u64).sum::<u64>());
        assert!(threads() <= pool().max_threads.load(Ordering::Relaxed));
    }

    #[test]
    fn a_panicking_job_is_an_error_not_an_abort() {
        let t = run(|| -> u32 { panic!("boom") });
        assert!(matches!(t.join("flush"), Err(StorageError::Failed(m)) if m.contains("flush")));
    }
}
