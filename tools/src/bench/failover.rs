//! `weir-bench failover`: starts a cluster of `weir-broker` processes on loopback,
//! keeps keyed `acks=mirrored` load on it, and kills -9 the primary of shard 0 again
//! and again. Each kill is timed three ways:
//! - `elected`: kill → a surviving node's metadata names a new primary (the consensus
//!   engine's and controller's part);
//! - `switchover`: kill → the first acknowledged mirrored produce of a fresh record
//!   through the SDK (what an application sees: its connection to the dead node
//!   fails, it refreshes the cluster view, retries on the successor, and the successor
//!   waits for its in-sync mirrors);
//! - `moved`: kill → every shard of the topic the killed node led (with another
//!   in-sync copy) has a new primary in a surviving node's metadata: the whole
//!   decision round, where `elected` sees only shard 0's part of it;
//! - `rejoin`: restart of the killed node → it is back in the shard's in-sync set.
//!
//! After the last kill the load stops and every acknowledged record is read back from
//! the current primaries: lost, duplicated and out-of-order (per key) records are
//! counted and make the run fail (exit code 3).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use weir_client::{
    Acks, Admin, Client, Consumer, OffsetReset, Producer, ProducerRecord, TopicConfig,
};
use weir_protocol::messages::DescribeClusterResponse;

use super::args::Args;

/// How long a node may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for any one step (a controller, a primary, a rejoin).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys of the load; per-key order is checked on read-back.
const KEYS: u64 = 16;

/// Where a load record sits: (shard, offset).
type Position = (u32, u64);
/// What a load record is: (key number, sequence number).
type LoadRecord = (u64, u64);

/// One `weir-broker` child of the run.
struct Node {
    id: u32,
    addr: String,
    http: String,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    fn spawn(&mut self, bin: &Path, peers: &str) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("broker-{}.log", self.starts)))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(&self.addr)
            .arg("--http")
            .arg(&self.http)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .env("WEIR_NODE_ID", self.id.to_string())
            .env("WEIR_PEERS", peers)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // The first line says the node listens; the rest is drained so a later print
        // never fails on a closed pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.contains("listening") => Ok(()),
            other => {
                self.kill9();
                bail!(
                    "node {} did not start ({other:?}); its log is in {}",
                    self.id,
                    self.dir.display()
                )
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The run's nodes; every child is killed and the data removed on drop.
struct Cluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    peers: String,
    root: PathBuf,
    keep: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Cluster {
    fn start(n: usize, bin: PathBuf, keep: bool) -> anyhow::Result<Cluster> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "weir-bench-failover-{}-{nanos}",
            std::process::id()
        ));
        // Every port chosen before any node starts: each must know the others.
        let listeners: Vec<std::net::TcpListener> = (0..2 * n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let ports: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<Result<_, _>>()?;
        drop(listeners);
        let peers = (0..n)
            .map(|i| format!("{}={}", i + 1, ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let dir = root.join(format!("node-{}", i + 1));
            std::fs::create_dir_all(dir.join("data"))
                .with_context(|| format!("creating {}", dir.display()))?;
            nodes.push(Node {
                id: i as u32 + 1,
                addr: ports[i].clone(),
                http: ports[n + i].clone(),
                dir,
                child: None,
                starts: 0,
            });
        }
        let mut c = Cluster {
            nodes,
            bin,
            peers,
            root,
            keep,
        };
        for i in 0..n {
            let (bin, peers) = (c.bin.clone(), c.peers.clone());
            c.nodes[i].spawn(&bin, &peers)?;
        }
        Ok(c)
    }

    fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }
}

/// What one kill took.
#[derive(Clone, Copy, Debug)]
struct Kill {
    elected: Duration,
    moved: Duration,
    switchover: Duration,
    rejoin: Duration,
}

/// The failover run's figures.
pub struct FailoverReport {
    pub nodes: usize,
    kills: Vec<Kill>,
    pub acked: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Load records the SDK gave up on (not acknowledged; allowed, not lost).
    pub failed: u64,
    /// The first records found stored twice, for a reader to look up
    /// (`--keep-data` keeps the nodes' copies).
    pub examples: Vec<String>,
}

impl FailoverReport {
    /// Whether the read-back found lost, duplicated or reordered records.
    pub fn has_errors(&self) -> bool {
        self.lost + self.duplicates + self.out_of_order > 0
    }

    fn figures(&self, f: impl Fn(&Kill) -> Duration) -> (Vec<f64>, f64, f64, f64) {
        let mut ms: Vec<f64> = self
            .kills
            .iter()
            .map(|k| f(k).as_secs_f64() * 1e3)
            .collect();
        let all = ms.clone();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            ms[((ms.len() as f64 - 1.0) * q).round() as usize]
        };
        (all, at(0.5), at(0.9), at(1.0))
    }

    pub fn to_json(&self) -> String {
        let part = |name: &str, f: &dyn Fn(&Kill) -> Duration| {
            let (all, p50, p90, max) = self.figures(f);
            let all: Vec<String> = all.iter().map(|v| format!("{v:.1}")).collect();
            format!(
                "\"{name}_ms\":{{\"p50\":{p50:.1},\"p90\":{p90:.1},\"max\":{max:.1},\"all\":[{}]}}",
                all.join(",")
            )
        };
        format!(
            "{{\"mode\":\"failover\",\"nodes\":{},\"kills\":{},{},{},{},{},\"acked\":{},\"lost\":{},\"duplicates\":{},\"out_of_order\":{},\"failed\":{}}}",
            self.nodes,
            self.kills.len(),
            part("switchover", &|k| k.switchover),
            part("elected", &|k| k.elected),
            part("moved", &|k| k.moved),
            part("rejoin", &|k| k.rejoin),
            self.acked,
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.failed
        )
    }

    pub fn human(&self) -> String {
        let line = |name: &str, f: &dyn Fn(&Kill) -> Duration| {
            let (_, p50, p90, max) = self.figures(f);
            format!("{name:<12} p50 {p50:8.1} ms   p90 {p90:8.1} ms   max {max:8.1} ms\n")
        };
        let mut s = format!(
            "failover: {} nodes, {} kills of the primary (kill -9)\n",
            self.nodes,
            self.kills.len()
        );
        s += &line("elected", &|k| k.elected);
        s += &line("moved", &|k| k.moved);
        s += &line("switchover", &|k| k.switchover);
        s += &line("rejoin", &|k| k.rejoin);
        s += &format!(
            "acknowledged {} records: {} lost, {} duplicated, {} out of key order; {} given up by the SDK\n",
            self.acked, self.lost, self.duplicates, self.out_of_order, self.failed
        );
        s
    }
}

/// The broker binary: `--broker-bin`, else `weir-broker` beside this program.
fn broker_bin(cli: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.broker_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("locating weir-bench")?;
    let p = me.with_file_name("weir-broker");
    if !p.exists() {
        bail!(
            "no weir-broker beside {} (build it, or pass --broker-bin)",
            me.display()
        );
    }
    Ok(p)
}

/// Runs the failover mode.
pub async fn run_failover(cli: Args) -> anyhow::Result<FailoverReport> {
    let n = cli.nodes;
    if n < 2 {
        bail!("--nodes must be at least 2 for a failover");
    }
    let replicas = if cli.replicas == 0 {
        n.min(3) as u8
    } else {
        cli.replicas
    };
    let min_in_sync = if cli.min_in_sync == 0 {
        2.min(replicas)
    } else {
        cli.min_in_sync
    };
    let shards = cli.shards.unwrap_or(1);
    let mut cluster = Cluster::start(n, broker_bin(&cli)?, cli.keep_data)?;
    let say = |s: String| {
        if !cli.json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "{n} nodes started ({}); data in {}",
        cluster.bootstrap(),
        cluster.root.display()
    ));
    wait_for_controller(&cluster).await?;
    let client = Client::connect(cluster.bootstrap()).await?;
    create_topic(&client, &cli.topic, shards, replicas, min_in_sync).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(
        client.clone(),
        cli.topic.clone(),
        cli.size,
        stop.clone(),
    ));
    let probe = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .linger(Duration::ZERO)
        .build()
        .await
        .context("building the probe producer")?;

    let mut kills = Vec::with_capacity(cli.kills);
    for k in 0..cli.kills {
        let controller = controller_of(&cluster).await;
        let candidates = if cli.avoid_controller { shards } else { 1 };
        let mut target = None;
        for shard in 0..candidates {
            let (p, e) = wait_all_in_sync(&cluster, &cli.topic, shard, replicas as usize).await?;
            if target.is_none() || Some(p) != controller {
                target = Some((shard, p, e));
            }
            if Some(p) != controller {
                break;
            }
        }
        let (shard, p, epoch) = target.context("no shard to kill")?;
        // Load runs a while on the healthy cluster before each kill.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let led = led_by(&cluster, &cli.topic, p).await;
        let node = &mut cluster.nodes[p as usize - 1];
        node.kill9();
        let killed = Instant::now();
        let elected = {
            let c = &cluster;
            let topic = cli.topic.clone();
            async move {
                loop {
                    if let Some((q, e)) = primary_of(c, &topic, shard).await {
                        if q != p && e > epoch {
                            return Ok::<Duration, anyhow::Error>(killed.elapsed());
                        }
                    }
                    if killed.elapsed() > STEP_TIMEOUT {
                        bail!("no new primary within {STEP_TIMEOUT:?} of kill {k}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let first_ack = async {
            let mut attempt = 0u64;
            loop {
                attempt += 1;
                let rec = ProducerRecord::new(cli.topic.clone(), format!("probe-{k}-{attempt}"))
                    .shard(shard);
                let r = match probe.send(rec).await {
                    Ok(f) => f.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => return Ok::<Duration, anyhow::Error>(killed.elapsed()),
                    Err(e) if killed.elapsed() > STEP_TIMEOUT => {
                        bail!("no mirrored ack within {STEP_TIMEOUT:?} of kill {k}: {e}")
                    }
                    Err(_) => {}
                }
            }
        };
        let moved = {
            let c = &cluster;
            let topic = cli.topic.clone();
            let led = &led;
            async move {
                loop {
                    if all_moved(c, &topic, led).await {
                        return Ok::<Duration, anyhow::Error>(killed.elapsed());
                    }
                    if killed.elapsed() > STEP_TIMEOUT {
                        bail!(
                            "{} shards not all moved within {STEP_TIMEOUT:?} of kill {k}",
                            led.len()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let (elected, moved, switchover) = tokio::try_join!(elected, moved, first_ack)?;
        let (bin, peers) = (cluster.bin.clone(), cluster.peers.clone());
        cluster.nodes[p as usize - 1].spawn(&bin, &peers)?;
        let restarted = Instant::now();
        wait_all_in_sync(&cluster, &cli.topic, shard, replicas as usize).await?;
        let kill = Kill {
            elected,
            moved,
            switchover,
            rejoin: restarted.elapsed(),
        };
        say(format!(
            "kill {:>2}: node {p} (shard {shard}, epoch {epoch}{}) elected {:.0} ms, {} shards moved {:.0} ms, first mirrored ack {:.0} ms, rejoined {:.0} ms",
            k + 1,
            if controller == Some(p) { ", the controller" } else { "" },
            kill.elected.as_secs_f64() * 1e3,
            led.len(),
            kill.moved.as_secs_f64() * 1e3,
            kill.switchover.as_secs_f64() * 1e3,
            kill.rejoin.as_secs_f64() * 1e3
        ));
        kills.push(kill);
    }

    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = load.await.context("load task")??;
    let read = read_back(&client, &cli.topic).await?;
    let (lost, duplicates, out_of_order) = check(&acked, &read);
    let examples = duplicated(&acked, &read, 10);
    for e in &examples {
        eprintln!("stored twice: {e}");
    }
    Ok(FailoverReport {
        nodes: n,
        kills,
        acked: acked.len() as u64,
        lost,
        duplicates,
        out_of_order,
        failed,
        examples,
    })
}

/// Waits until some node names a controller that knows every node.
async fn wait_for_controller(c: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        for n in c.running() {
            if let Some(d) = describe(&n.addr).await {
                if d.controller != 0 && d.nodes.len() == c.nodes.len() {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no controller within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The controller a running node names.
async fn controller_of(c: &Cluster) -> Option<u32> {
    for n in c.running() {
        if let Some(d) = describe(&n.addr).await {
            if d.controller != 0 {
                return Some(d.controller);
            }
        }
    }
    None
}

/// One node's own view of the cluster, if it answers within a second.
async fn describe(addr: &str) -> Option<DescribeClusterResponse> {
    let attempt = async {
        let client = Client::connect(addr.to_string()).await.ok()?;
        Admin::new(client).describe_cluster_at(addr).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

async fn create_topic(
    client: &Client,
    topic: &str,
    shards: u32,
    replicas: u8,
    min_in_sync: u8,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let config = TopicConfig {
        replicas,
        min_in_sync,
        ..TopicConfig::default()
    };
    let mut attempts = 0u32;
    loop {
        let r = Admin::new(client.clone())
            .create_topic(topic, shards, config.clone())
            .await;
        attempts += 1;
        match r {
            Ok(_) => return Ok(()),
            // An earlier attempt whose answer was lost (a slow creation of many
            // shards) created it.
            Err(e)
                if attempts > 1
                    && e.code() == Some(weir_protocol::ErrorCode::TopicAlreadyExists) =>
            {
                return Ok(())
            }
            Err(e) if Instant::now() > deadline => bail!("creating {topic}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A shard's (primary, epoch, in-sync set) as the running nodes see it (the answer
/// with the highest epoch).
async fn placement(c: &Cluster, topic: &str, shard: u32) -> Option<(u32, u32, Vec<u32>)> {
    let mut best: Option<(u32, u32, Vec<u32>)> = None;
    for n in c.running() {
        if let Some(d) = describe(&n.addr).await {
            if let Some(s) = d
                .shards
                .iter()
                .find(|s| s.topic == topic && s.shard == shard)
            {
                if best.as_ref().is_none_or(|b| s.epoch > b.1) {
                    best = Some((s.primary, s.epoch, s.in_sync.clone()));
                }
            }
        }
    }
    best
}

/// The shards of `topic` that node `p` leads and that another in-sync copy could take
/// over, with their epochs, as a running node sees them.
async fn led_by(c: &Cluster, topic: &str, p: u32) -> Vec<(u32, u32)> {
    for n in c.running() {
        if let Some(d) = describe(&n.addr).await {
            return d
                .shards
                .iter()
                .filter(|s| s.topic == topic && s.primary == p && s.in_sync.iter().any(|&i| i != p))
                .map(|s| (s.shard, s.epoch))
                .collect();
        }
    }
    Vec::new()
}

/// Whether some running node's metadata gives every shard of `led` a new primary (a
/// higher epoch and a primary).
async fn all_moved(c: &Cluster, topic: &str, led: &[(u32, u32)]) -> bool {
    for n in c.running() {
        if let Some(d) = describe(&n.addr).await {
            let moved = led.iter().all(|&(shard, epoch)| {
                d.shards.iter().any(|s| {
                    s.topic == topic && s.shard == shard && s.epoch > epoch && s.primary != 0
                })
            });
            if moved {
                return true;
            }
        }
    }
    false
}

async fn primary_of(c: &Cluster, topic: &str, shard: u32) -> Option<(u32, u32)> {
    placement(c, topic, shard)
        .await
        .filter(|(p, _, _)| *p != 0)
        .map(|(p, e, _)| (p, e))
}

/// Waits until the shard has a running primary and `copies` in-sync copies; returns
/// (primary, epoch).
async fn wait_all_in_sync(
    c: &Cluster,
    topic: &str,
    shard: u32,
    copies: usize,
) -> anyhow::Result<(u32, u32)> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some((p, e, in_sync)) = placement(c, topic, shard).await {
            let running = p != 0 && c.nodes[p as usize - 1].child.is_some();
            if running && in_sync.len() >= copies {
                return Ok((p, e));
            }
        }
        if Instant::now() > deadline {
            bail!("{topic}/{shard} not fully in sync within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keyed mirrored load until `stop`: value = sequence number; returns every
/// acknowledged (shard, offset) → (key, sequence), and how many records the SDK gave
/// up on.
async fn load(
    client: Client,
    topic: String,
    size: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(BTreeMap<Position, LoadRecord>, u64)> {
    let producer = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .linger(Duration::from_millis(1))
        .build()
        .await
        .context("building the load producer")?;
    let failed = AtomicU64::new(0);
    let mut acked = BTreeMap::new();
    let mut seq = 0u64;
    let pad = "x".repeat(size.saturating_sub(20));
    while !stop.load(Ordering::Relaxed) {
        let mut futs = Vec::with_capacity(64);
        for _ in 0..64 {
            let key = seq % KEYS;
            let rec = ProducerRecord::new(topic.clone(), format!("{seq:020}{pad}"))
                .key(format!("k{key}"));
            futs.push((key, seq, producer.send(rec).await));
            seq += 1;
        }
        for (key, s, f) in futs {
            match f {
                Ok(f) => match f.await {
                    Ok(md) => {
                        acked.insert((md.shard, md.offset), (key, s));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok((acked, failed.into_inner()))
}

/// Every load record in the topic: (shard, offset) → (key, sequence).
async fn read_back(client: &Client, topic: &str) -> anyhow::Result<Vec<(Position, LoadRecord)>> {
    let meta = Admin::new(client.clone()).describe_topic(topic).await?;
    let ends: HashMap<u32, u64> = meta
        .shards
        .iter()
        .map(|s| (s.shard, s.high_watermark))
        .collect();
    let mut consumer = Consumer::builder(client)
        .topic(topic)
        .reset(OffsetReset::Earliest)
        .fetch_max_wait(Duration::from_millis(100))
        .build()?;
    let mut out = Vec::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let pos = consumer.positions();
        if pos.len() == ends.len() && pos.iter().all(|p| p.offset >= ends[&p.shard]) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("read back {} records of {topic} only", out.len());
        }
        for m in consumer.poll(10_000, Duration::from_millis(200)).await? {
            if m.value.starts_with(b"probe-") {
                continue;
            }
            let key: u64 = std::str::from_utf8(&m.key[1..])
                .ok()
                .and_then(|k| k.parse().ok())
                .context("a load key")?;
            let seq: u64 = std::str::from_utf8(&m.value[..20.min(m.value.len())])
                .ok()
                .and_then(|v| v.parse().ok())
                .context("a load value")?;
            out.push(((m.shard, m.offset), (key, seq)));
        }
    }
}

/// (lost, duplicated, out of key order) of the acknowledged records in what was read.
fn check(
    acked: &BTreeMap<Position, LoadRecord>,
    read: &[(Position, LoadRecord)],
) -> (u64, u64, u64) {
    // By position: a consumer that re-reads after a switchover (it resumes from the
    // position it had) may hand out the same stored record twice; that is not a
    // duplicate in the log.
    let mut at: BTreeMap<Position, LoadRecord> = BTreeMap::new();
    for (pos, rec) in read {
        at.entry(*pos).or_insert(*rec);
    }
    let lost = acked
        .iter()
        .filter(|(pos, rec)| at.get(pos) != Some(rec))
        .count() as u64;
    let mut seen = HashMap::new();
    let mut duplicates = 0;
    for (_, seq) in at.values() {
        if seen.insert(*seq, ()).is_some() {
            duplicates += 1;
        }
    }
    // Per key, sequence numbers rise with offsets (one shard per key).
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut out_of_order = 0;
    for (key, seq) in at.values() {
        if let Some(prev) = last.insert(*key, *seq) {
            if *seq < prev {
                out_of_order += 1;
            }
        }
    }
    (lost, duplicates, out_of_order)
}

/// Up to `max` records stored at more than one position: "sequence S, key K at
/// shard/offset (acked), shard/offset".
fn duplicated(
    acked: &BTreeMap<Position, LoadRecord>,
    read: &[(Position, LoadRecord)],
    max: usize,
) -> Vec<String> {
    let mut by_seq: BTreeMap<u64, (u64, std::collections::BTreeSet<Position>)> = BTreeMap::new();
    for (pos, (key, seq)) in read {
        by_seq
            .entry(*seq)
            .or_insert((*key, Default::default()))
            .1
            .insert(*pos);
    }
    by_seq
        .into_iter()
        .filter(|(_, (_, at))| at.len() > 1)
        .take(max)
        .map(|(seq, (key, at))| {
            let places: Vec<String> = at
                .iter()
                .map(|p| {
                    let mark = if acked.contains_key(p) {
                        " (acked)"
                    } else {
                        ""
                    };
                    format!("{}/{}{mark}", p.0, p.1)
                })
                .collect();
            format!("sequence {seq}, key k{key} at {}", places.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{check, duplicated, LoadRecord, Position};
    use std::collections::BTreeMap;

    #[test]
    fn check_counts_lost_duplicated_and_reordered_records() {
        let acked: BTreeMap<Position, LoadRecord> =
            [((0, 0), (1, 0)), ((0, 1), (1, 1)), ((0, 2), (2, 2))].into();
        // Everything there, in order.
        let read: Vec<_> = acked.iter().map(|(p, r)| (*p, *r)).collect();
        assert_eq!(check(&acked, &read), (0, 0, 0));
        // Offset 1 missing, sequence 0 stored twice, key 1 going backwards.
        let read = vec![((0, 0), (1, 0)), ((0, 2), (2, 2)), ((0, 3), (1, 0))];
        assert_eq!(check(&acked, &read), (1, 1, 0));
        let twice = duplicated(&acked, &[((0, 0), (1, 0)), ((0, 3), (1, 0))], 10);
        assert_eq!(
            twice,
            vec!["sequence 0, key k1 at 0/0 (acked), 0/3".to_string()]
        );
        // The same position read twice is one stored record.
        let read = vec![
            ((0, 0), (1, 0)),
            ((0, 1), (1, 1)),
            ((0, 1), (1, 1)),
            ((0, 2), (2, 2)),
        ];
        assert_eq!(check(&acked, &read), (0, 0, 0));
        let read = vec![((0, 0), (1, 1)), ((0, 1), (1, 0)), ((0, 2), (2, 2))];
        let (lost, dup, ooo) = check(&acked, &read);
        assert_eq!((lost, dup, ooo), (2, 0, 1));
    }
}
