//! Helpers shared by the integration tests.
//!
//! The tests run the real `weir-broker` binary as a child process on free loopback
//! ports, so they exercise exactly what a user runs: flag parsing, the stdout
//! "listening" line, signal handling, recovery from the data directory. Everything here
//! is bounded in time: a broker that does not come up, a consumer that never sees its
//! messages, a proxy that hangs, all end in a panic with a message instead of a stuck
//! test run.

pub mod certs;
pub mod transport;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_client::{Admin, Client, Consumer, Message, OffsetReset};

/// Longest wait for a broker to print its "listening" line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a broker to exit after SIGTERM.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Builds `bin` of `package` (debug profile) once per test process and returns its path.
///
/// Cargo only sets `CARGO_BIN_EXE_*` for binaries of the package under test, so the
/// broker and CLI binaries are built here with the same cargo that runs the tests; when
/// they are up to date this is a no-op that takes a fraction of a second.
pub fn binary(package: &'static str, bin: &'static str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(bin) {
        return p.clone();
    }
    let target = target_dir();
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--target-dir",
        ])
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = target
        .join("debug")
        .join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} missing after build", path.display());
    built.insert(bin, path.clone());
    path
}

/// The `weir-broker` binary.
pub fn broker_binary() -> PathBuf {
    binary("weir-broker", "weir-broker")
}

/// The `weir` CLI binary.
pub fn cli_binary() -> PathBuf {
    binary("weir-tools", "weir")
}

/// A `weir-broker` child process on loopback with its own temporary data directory.
///
/// Dropping it SIGKILLs the child, so a failing test never leaves a broker behind.
pub struct BrokerProcess {
    child: Option<Child>,
    /// Holds the data directory and the broker's log; removed on drop.
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    http: SocketAddr,
    starts: u32,
}

impl BrokerProcess {
    /// Starts a broker with default settings.
    pub fn start() -> BrokerProcess {
        Self::start_with_env(&[])
    }

    /// Starts a broker with extra `WEIR_*` settings, e.g.
    /// `("WEIR_GROUP_MIN_SESSION_TIMEOUT_MS", "200")`.
    pub fn start_with_env(env: &[(&str, &str)]) -> BrokerProcess {
        Self::start_in(Self::new_dir(), env)
    }

    /// A fresh directory for [`BrokerProcess::start_in`]; the broker's data goes to
    /// its `data` subdirectory (made here, so a test can mount something there first).
    pub fn new_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("weir-it-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        dir
    }

    /// Starts a broker whose data lives in `dir/data`.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> BrokerProcess {
        let mut b = BrokerProcess {
            child: None,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addr: "127.0.0.1:0".parse().expect("addr"),
            http: "127.0.0.1:0".parse().expect("addr"),
            starts: 0,
        };
        b.spawn(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        );
        b
    }

    /// Starts a broker listening on `listen` (a cluster node: its peers know its
    /// address in advance), data in a fresh directory.
    pub fn start_at(listen: SocketAddr, http: SocketAddr, env: &[(&str, &str)]) -> BrokerProcess {
        Self::start_at_prepared(listen, http, env, |_| {})
    }

    /// [`BrokerProcess::start_at`], with `prepare` run on the (not yet created) data
    /// directory's path first (to mount a small file system there, say).
    pub fn start_at_prepared(
        listen: SocketAddr,
        http: SocketAddr,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> BrokerProcess {
        let mut b = BrokerProcess {
            child: None,
            dir: Self::new_dir(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addr: listen,
            http,
            starts: 0,
        };
        let cut = b.partition_file().display().to_string();
        b.env.push(("WEIR_CLUSTER_PARTITION_FILE".into(), cut));
        prepare(&b.data_dir());
        b.spawn(listen, http);
        b
    }

    /// The fault-injection file of a cluster node started by
    /// [`BrokerProcess::start_at`]: while it exists, the node is cut off from the
    /// other nodes.
    pub fn partition_file(&self) -> PathBuf {
        self.dir.path().join("partitioned")
    }

    /// Whether the child is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The protocol address, "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The broker's data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The broker's stderr (its logs) of every run so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        for n in 1..=self.starts {
            let _ =
                std::fs::File::open(self.log_path(n)).and_then(|mut f| f.read_to_string(&mut s));
        }
        s
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("broker-{run}.log"))
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, listen: SocketAddr, http: SocketAddr) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let mut cmd = Command::new(broker_binary());
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--http")
            .arg(http.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // Settings of the environment running the tests must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WEIR_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("WEIR_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn weir-broker");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the one line the broker prints, then keeps draining so a later print
        // never fails on a closed pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                self.kill9();
                panic!(
                    "weir-broker did not report its addresses within {START_TIMEOUT:?} (exit: {status:?}); log:\n{}",
                    self.log()
                );
            }
        };
        let (addr, http) = parse_listening_line(&line)
            .unwrap_or_else(|| panic!("unexpected first line from weir-broker: {line:?}"));
        self.addr = addr;
        self.http = http;
    }

    /// SIGKILL: the broker gets no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("broker is running");
        // SAFETY: plain kill(2) on the pid of our own child, which has not been waited
        // for yet, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            if let Some(status) = c.try_wait().expect("wait broker") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "weir-broker did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets (or replaces) a `WEIR_*` variable for the next [`BrokerProcess::restart`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Runs `weir-broker` on this broker's data directory (which must be stopped) with
    /// its settings plus `env`, expecting it to refuse to start; returns its stderr.
    /// Panics if it is still running after `within`.
    pub fn start_refused(&self, env: &[(&str, &str)], within: Duration) -> String {
        assert!(self.child.is_none(), "stop the broker first");
        let mut cmd = Command::new(broker_binary());
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WEIR_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn weir-broker");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                let _ = child
                    .stderr
                    .take()
                    .expect("stderr")
                    .read_to_string(&mut err);
                assert!(!status.success(), "weir-broker exited 0: {err}");
                return err;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("weir-broker did not refuse to start within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same data directory and, if they are still free,
    /// the same ports, so existing clients can reconnect to the same address.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        let (addr, http) = (self.addr, self.http);
        self.spawn(addr, http);
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() && std::env::var_os("WEIR_TEST_SHOW_LOG").is_some() {
            eprintln!("--- broker log ---\n{}", self.log());
        }
    }
}

/// Parses `weir-broker listening on ADDR http ADDR`.
fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("weir-broker listening on ")?;
    let (addr, http) = rest.split_once(" http ")?;
    Some((addr.trim().parse().ok()?, http.trim().parse().ok()?))
}

/// Connects a client, retrying for up to `within` (a restarted broker may still be
/// opening its logs).
pub async fn connect(addr: &str, within: Duration) -> Client {
    connect_with(addr, weir_client::ClientConfig::default(), within).await
}

/// [`connect`] with settings.
pub async fn connect_with(
    addr: &str,
    config: weir_client::ClientConfig,
    within: Duration,
) -> Client {
    let deadline = Instant::now() + within;
    loop {
        match Client::connect_with(addr, config.clone()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// Reads every shard of `topic` from the beginning, outside any group, until `expected`
/// messages arrived (then waits `settle` more to catch extras) or `within` passed.
pub async fn read_all(
    client: &Client,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<Message> {
    let mut consumer = Consumer::builder(client)
        .topic(topic)
        .reset(OffsetReset::Earliest)
        .fetch_max_wait(Duration::from_millis(100))
        .build()
        .expect("consumer");
    let mut out = Vec::with_capacity(expected);
    let deadline = Instant::now() + within;
    while out.len() < expected && Instant::now() < deadline {
        out.extend(
            consumer
                .poll(10_000, Duration::from_millis(200))
                .await
                .expect("poll"),
        );
    }
    // A short extra look: more than `expected` is a failure callers want to see.
    let settle_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle_until {
        out.extend(
            consumer
                .poll(10_000, Duration::from_millis(100))
                .await
                .expect("poll"),
        );
    }
    out
}

/// Reads every shard of `topic` from its log start up to the high-water mark it has now;
/// panics if that takes longer than `within`.
pub async fn read_to_end(client: &Client, topic: &str, within: Duration) -> Vec<Message> {
    let meta = Admin::new(client.clone())
        .describe_topic(topic)
        .await
        .expect("describe topic");
    let ends: HashMap<u32, u64> = meta
        .shards
        .iter()
        .map(|s| (s.shard, s.high_watermark))
        .collect();
    let total: u64 = meta
        .shards
        .iter()
        .map(|s| s.high_watermark - s.log_start_offset)
        .sum();
    let mut consumer = Consumer::builder(client)
        .topic(topic)
        .reset(OffsetReset::Earliest)
        .fetch_max_wait(Duration::from_millis(100))
        .build()
        .expect("consumer");
    let mut out = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + within;
    loop {
        let done = consumer.positions().len() == ends.len()
            && consumer
                .positions()
                .iter()
                .all(|p| p.offset >= ends[&p.shard]);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read {} of {total} records of {topic} within {within:?}",
            out.len()
        );
        for m in consumer
            .poll(10_000, Duration::from_millis(200))
            .await
            .expect("poll")
        {
            if m.offset < ends[&m.shard] {
                out.push(m);
            }
        }
    }
    out
}

/// A loopback TCP proxy whose connections the test can cut at any moment, to force
/// client reconnects mid-stream.
pub struct CutProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    /// Bumped by `cut`; every pipe started under an older value stops.
    generation: AtomicU64,
    cut: tokio::sync::watch::Sender<u64>,
    connections: AtomicU64,
    stopped: AtomicBool,
    /// While set, new connections are dropped at once (a network partition).
    blocked: AtomicBool,
    /// While set, what the broker sends is dropped and what the client sends still
    /// arrives: requests are served, their answers lost.
    muted: AtomicBool,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(ProxyState {
            generation: AtomicU64::new(0),
            cut: tokio::sync::watch::channel(0).0,
            connections: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            muted: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                if st.stopped.load(Ordering::Acquire) {
                    return;
                }
                if st.blocked.load(Ordering::Acquire) {
                    drop(down);
                    continue;
                }
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let born = st.generation.load(Ordering::Acquire);
                    let mut cut = st.cut.subscribe();
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let a = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match dr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if uw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let b = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match ur.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if st.muted.load(Ordering::Acquire) {
                                continue;
                            }
                            if dw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let c = async {
                        loop {
                            if *cut.borrow_and_update() > born {
                                return;
                            }
                            if cut.changed().await.is_err() {
                                return;
                            }
                        }
                    };
                    // Whichever ends first ends both directions: the sockets drop here.
                    tokio::select! {
                        _ = a => {}
                        _ = b => {}
                        _ = c => {}
                    }
                });
            }
        });
        CutProxy {
            addr,
            state,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Drops every live connection at once, in both directions.
    pub fn cut(&self) {
        let g = self.state.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.state.cut.send_replace(g);
    }

    /// Partitions the link: drops every live connection and every new one until
    /// [`CutProxy::heal`].
    pub fn block(&self) {
        self.state.blocked.store(true, Ordering::Release);
        self.cut();
    }

    /// Lets connections through again, both ways.
    pub fn heal(&self) {
        self.state.muted.store(false, Ordering::Release);
        self.state.blocked.store(false, Ordering::Release);
    }

    /// Loses the broker's answers from now on, while requests still reach it (so
    /// what is sent is stored but never acknowledged), until [`CutProxy::heal`].
    pub fn mute(&self) {
        self.state.muted.store(true, Ordering::Release);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

/// A broker process with one topic, a client connected to it directly (to set up and
/// to read back), and a [`CutProxy`] in front of it with a client connected through
/// it (the one whose connections a test cuts).
pub struct BehindProxy {
    pub broker: BrokerProcess,
    pub direct: Client,
    pub proxy: CutProxy,
    pub client: Client,
}

impl BehindProxy {
    /// Starts it all, with `topic` created at `shards` shards.
    pub async fn start(topic: &str, shards: u32) -> BehindProxy {
        let broker = BrokerProcess::start();
        let direct = connect(&broker.addr(), Duration::from_secs(5)).await;
        Admin::new(direct.clone())
            .create_topic(topic, shards, Default::default())
            .await
            .expect("create topic");
        let proxy = CutProxy::start(broker.addr().parse().expect("addr")).await;
        let client = Client::connect(proxy.addr())
            .await
            .expect("connect via proxy");
        BehindProxy {
            broker,
            direct,
            proxy,
            client,
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        self.cut();
        self.accept.abort();
    }
}

/// The body (with headers) of `GET path` from the broker's HTTP listener.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("http write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("http answer in time")
        .expect("http read");
    out
}

/// One value from the broker's `/metrics`; `name` includes its labels, if any
/// (`weir_requests_on_core_total{core="0"}`).
pub async fn metric(broker: &BrokerProcess, name: &str) -> u64 {
    http_get(broker.http_addr(), "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, `Threads:` ...), with
/// values given in kB converted to bytes; 0 when the field is missing.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let Some(line) = status.lines().find(|l| l.starts_with(field)) else {
        return 0;
    };
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    match words.next() {
        Some("kB") => value * 1024,
        _ => value,
    }
}

/// `n` free loopback ports, found by binding port 0 and letting go (a cluster's
/// nodes must know each other's addresses before any starts).
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect()
}

/// A tmpfs mounted on a directory; unmounted (and the directory removed) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        Tmpfs::mount_with(at, &format!("size={size}"))
    }

    /// With mount options `opts` (`size=48m,nr_inodes=100`, say).
    pub fn mount_with(at: &Path, opts: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster of `weir-broker` processes on loopback: node `i + 1` is `nodes[i]`.
pub struct ClusterProcesses {
    pub nodes: Vec<BrokerProcess>,
}

impl ClusterProcesses {
    /// Starts `n` nodes that know each other, with extra `WEIR_*` settings.
    pub fn start(n: usize, env: &[(&str, &str)]) -> ClusterProcesses {
        Self::start_each(n, |_| {
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    /// Starts `n` nodes that know each other, node `id` with the extra `WEIR_*`
    /// settings `env(id)` (a node set up differently from the others).
    pub fn start_each(n: usize, env: impl Fn(u32) -> Vec<(String, String)>) -> ClusterProcesses {
        Self::start_prepared(n, env, |_, _| {})
    }

    /// [`ClusterProcesses::start_each`], with `prepare(id, data_dir)` run before node
    /// `id` starts.
    pub fn start_prepared(
        n: usize,
        env: impl Fn(u32) -> Vec<(String, String)>,
        prepare: impl Fn(u32, &Path),
    ) -> ClusterProcesses {
        // Every port chosen up front (protocol and HTTP), so a node started earlier
        // cannot be given a later node's port.
        let all = free_ports(2 * n);
        let (addrs, https) = all.split_at(n);
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = (i + 1).to_string();
                let own = env(i as u32 + 1);
                let mut e: Vec<(&str, &str)> = vec![("WEIR_NODE_ID", &id), ("WEIR_PEERS", &peers)];
                e.extend(own.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                BrokerProcess::start_at_prepared(*a, https[i], &e, |dir| prepare(i as u32 + 1, dir))
            })
            .collect();
        ClusterProcesses { nodes }
    }

    /// Starts one more node (id `nodes.len() + 1`) with `--join`, knowing only itself
    /// and node 1; it waits for `weir cluster add-node` (Admin::add_node). Returns its
    /// id.
    pub fn join(&mut self, env: &[(&str, &str)]) -> u32 {
        let id = self.nodes.len() as u32 + 1;
        let ports = free_ports(2);
        let peers = format!("{id}={},1={}", ports[0], self.nodes[0].addr());
        let id_s = id.to_string();
        let mut e: Vec<(&str, &str)> = vec![
            ("WEIR_NODE_ID", &id_s),
            ("WEIR_PEERS", &peers),
            ("WEIR_CLUSTER_JOIN", "true"),
        ];
        e.extend_from_slice(env);
        self.nodes
            .push(BrokerProcess::start_at(ports[0], ports[1], &e));
        id
    }

    /// Cuts node `id` off from every other node, both ways, while clients still
    /// reach it: the node's fault-injection file (`cluster_partition_file`) is
    /// created, so its calls to the others fail and it refuses theirs.
    pub fn isolate(&self, id: u32) {
        let n = &self.nodes[id as usize - 1];
        std::fs::write(n.partition_file(), b"cut").expect("partition file");
    }

    /// Undoes every [`ClusterProcesses::isolate`].
    pub fn heal(&self) {
        for n in &self.nodes {
            let _ = std::fs::remove_file(n.partition_file());
        }
    }

    /// Every node's protocol address, comma-separated (a client's bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node with this id.
    pub fn node(&mut self, id: u32) -> &mut BrokerProcess {
        &mut self.nodes[id as usize - 1]
    }
}

/// One Produce request of `records` (batches as built) to shard 0 of `topic`, durable:
/// where its first record landed, or the error as text. For tests that need exact
/// batches (producer ids, sequences, priorities) rather than the SDK's.
pub async fn produce_raw(
    client: &Client,
    topic: &str,
    records: bytes::Bytes,
) -> Result<u64, String> {
    use weir_protocol::messages::{Acks, ProduceRequest, Records};
    let req = ProduceRequest {
        topic: topic.into(),
        shard: 0,
        acks: Acks::Durable,
        timeout_ms: 60_000,
        records: Records::from_bytes(records),
    };
    match client.call(req).await {
        Ok(weir_protocol::ResponseBody::Produce(r)) => Ok(r.base_offset),
        Ok(other) => Err(format!("unexpected {:?}", other.api_key())),
        Err(e) => Err(e.to_string()),
    }
}

/// Flips one byte of the first occurrence of `needle` in any file under `dir` (a
/// broker's data directory: damage on disk, as a bad sector or a stray write makes it).
pub fn damage_first(dir: &std::path::Path, needle: &[u8]) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).expect("read file");
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                use std::io::{Seek, SeekFrom, Write};
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .expect("open for writing");
                f.seek(SeekFrom::Start(at as u64)).expect("seek");
                f.write_all(&[bytes[at] ^ 0x20]).expect("write");
                return;
            }
        }
    }
    panic!("{needle:?} not found under {}", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (a, h) =
            parse_listening_line("weir-broker listening on 127.0.0.1:4000 http 127.0.0.1:4001\n")
                .unwrap();
        assert_eq!(a.port(), 4000);
        assert_eq!(h.port(), 4001);
        assert!(parse_listening_line("something else").is_none());
    }
}
