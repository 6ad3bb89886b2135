//! The storage engine's background workers: one bounded, process-wide pool of threads
//! that runs every log's background file work (group-commit and interval flushes,
//! preparing the next segment, deleting segments retention removed, write-behind
//! starts, and the page-cache window's drops and read-aheads).
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

/// A pool of worker threads; the storage engine uses one, [`pool`].
struct Pool {
    state: Mutex<State>,
    work: Condvar,
    max_threads: AtomicUsize,
    /// Starts a worker thread running the closure it is given.
    spawn: fn(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Spawns that failed since the last successful one (one warning per streak).
    spawn_failures: u64,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(DEFAULT_MAX_THREADS, spawn_thread))
}

#[cfg(test)]
thread_local! {
    /// Tests make spawning fail on their own thread to drive a log through it.
    pub(crate) static FAIL_SPAWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn spawn_thread(body: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_SPAWN.with(|f| f.get()) {
        return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
    }
    std::thread::Builder::new()
        .name("weir-storage".into())
        .spawn(body)
        .map(drop)
}

/// Sets the most threads the pool starts (at least 1); threads already running stay.
pub fn set_max_threads(n: usize) {
    pool().max_threads.store(n.max(1), Ordering::Relaxed);
}

/// Threads the pool runs now.
pub fn threads() -> usize {
    pool().threads()
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Jobs run outside the lock, so a poisoned lock only means a panic in this
    // module's own short critical sections; the state is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    fn new(max_threads: usize, spawn: fn(Box<dyn FnOnce() + Send>) -> std::io::Result<()>) -> Self {
        Pool {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            max_threads: AtomicUsize::new(max_threads.max(1)),
            spawn,
        }
    }

    fn threads(&self) -> usize {
        lock(&self.state).threads
    }

    fn worker_loop(&'static self) {
        // Started from whichever thread submitted a job (a pinned core thread's
        // blocking work, say): serve every core, like the shard writers.
        crate::affinity::unpin_current_thread();
        let mut st = lock(&self.state);
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                job();
                st = lock(&self.state);
                continue;
            }
            st.idle += 1;
            st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
            st.idle -= 1;
        }
    }

    /// See [`run`].
    fn run<T: Send + 'static>(&'static self, f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        let mut st = lock(&self.state);
        st.queue.push_back(job);
        if st.idle >= st.queue.len() {
            self.work.notify_one();
        } else if st.threads < self.max_threads.load(Ordering::Relaxed) {
            match (self.spawn)(Box::new(move || self.worker_loop())) {
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
                    self.work.notify_one();
                }
            }
        }
        Task { rx, done: None }
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

#[cfg(test)]
impl Task<()> {
    /// A task of no pool thread that ends when the sender sends: a job still running,
    /// for tests, without holding a worker other tests may need.
    pub(crate) fn held() -> (Task<()>, mpsc::Sender<std::thread::Result<()>>) {
        let (tx, rx) = mpsc::channel();
        (Task { rx, done: None }, tx)
    }
}

/// Runs `f` on a pool thread (on this thread when no pool thread exists and none can
/// be started) and returns its outcome's handle. Never fails.
pub(crate) fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    pool().run(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(p: Pool) -> &'static Pool {
        Box::leak(Box::new(p))
    }

    fn never(_: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// Starts one thread, then fails like a process at its thread limit.
    fn once(body: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        if STARTED.fetch_add(1, Ordering::SeqCst) > 0 {
            return never(body);
        }
        spawn_thread(body)
    }

    #[test]
    fn a_job_runs_on_the_caller_when_no_thread_can_be_started() {
        let p = leak(Pool::new(4, never));
        let caller = std::thread::current().id();
        let t = p.run(move || std::thread::current().id() == caller);
        assert!(t.join("job").unwrap(), "ran here");
        assert_eq!(p.threads(), 0);
    }

    #[test]
    fn jobs_wait_for_the_running_thread_when_no_more_can_be_started() {
        let p = leak(Pool::new(4, once));
        let caller = std::thread::current().id();
        let tasks: Vec<_> = (0..50u64)
            .map(|i| p.run(move || (i, std::thread::current().id() != caller)))
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(
                t.join("job").unwrap(),
                (i as u64, true),
                "ran on the worker"
            );
        }
        assert_eq!(p.threads(), 1);
    }

    #[test]
    fn the_pool_never_exceeds_its_bound_and_runs_every_job() {
        let p = leak(Pool::new(3, spawn_thread));
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                p.run(move || {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    i
                })
            })
            .collect();
        let sum: u64 = tasks.into_iter().map(|t| t.join("job").unwrap()).sum();
        assert_eq!(sum, (0..200u64).sum::<u64>());
        assert!(p.threads() <= 3);
    }

    #[test]
    fn a_panicking_job_is_an_error_not_an_abort() {
        let t = run(|| -> u32 { panic!("boom") });
        assert!(matches!(t.join("flush"), Err(StorageError::Failed(m)) if m.contains("flush")));
    }
}
