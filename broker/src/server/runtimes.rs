//! Connection runtimes for `runtime = "thread_per_core"`.
//!
//! One OS thread per core, each pinned to its core and running a single-threaded Tokio
//! runtime. The acceptor hands every new connection to the next runtime in turn; the
//! connection, its write loop and the request tasks it spawns then stay on that core,
//! so their state is never touched from another thread and no work-stealing moves them
//! (the design Redpanda and Iggy use). Shard writers keep their own threads; a produce
//! crosses to the writer by channel in both modes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::affinity::{allowed_cpus, pin_to_cpu, unpin_current_thread};

thread_local! {
    /// The index of the connection runtime this thread runs, if it is one.
    static CORE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Which connection runtime the calling thread runs (`None` off the core threads).
pub fn current_core() -> Option<usize> {
    CORE.with(|c| c.get())
}

/// The started runtimes; dropped or [`CoreRuntimes::stop`]ped when the server ends.
pub struct CoreRuntimes {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl CoreRuntimes {
    /// Starts `n` runtimes (n ≥ 1). Runtime `i` is pinned to the `i mod m`-th of the
    /// `m` CPUs this process may use; a failed pin is logged and the runtime runs
    /// unpinned. Threads the runtimes start for blocking work are not pinned.
    pub fn start(n: usize) -> std::io::Result<CoreRuntimes> {
        let allowed = allowed_cpus();
        let mut rts = CoreRuntimes {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
        };
        for i in 0..n.max(1) {
            let cpu = allowed.get(i % allowed.len().max(1)).copied();
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("weir-core-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to_cpu(cpu);
                    }
                    CORE.with(|c| c.set(Some(i)));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .on_thread_start(unpin_current_thread)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    // Spawned connections run while this thread is inside block_on.
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    // Blocking work still running (a class-index scan) must not hold
                    // up the broker's shutdown.
                    rt.shutdown_timeout(Duration::from_secs(5));
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| std::io::Error::other("connection runtime thread died"))??;
            rts.handles.push(handle);
            rts.stops.push(stop_tx);
            rts.threads.push(thread);
        }
        Ok(rts)
    }

    /// The runtime for the next connection (round robin).
    pub fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Stops every runtime (dropping tasks still on it) and joins the threads.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for CoreRuntimes {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
