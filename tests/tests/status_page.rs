//! The status page (`GET /`) in a real headless browser: Debian's chromium, driven over
//! the Chrome DevTools Protocol (a WebSocket, `tungstenite`). The page must load
//! without console errors or uncaught exceptions, show a topic the test created, show
//! its record count rising while the test produces (the same page, updating live), and
//! list the dead-letter alert the test caused. A screenshot is saved to
//! `target/status-page.png`.
//!
//! `.ci/run` installs chromium when it is missing; without it this test says so loudly
//! and passes without checking anything.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};
use weir_client::{Acks, Admin, NackOutcome, Producer, ProducerRecord, QueueConfig, QueueConsumer};
use weir_tests::{connect, workspace_root, BrokerProcess};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless chromium with its DevTools port; killed on drop.
struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes its port to DevToolsActivePort in the profile once it listens.
        let file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()))
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// The WebSocket URL of the first page target.
    fn page_ws(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = http_get_blocking(&format!("127.0.0.1:{}", self.port), "/json/list");
            if let Ok(v) = serde_json::from_str::<Value>(&list) {
                if let Some(url) = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                {
                    return url.to_string();
                }
            }
            assert!(Instant::now() < deadline, "no page target: {list}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A blocking `GET` of `path` (HTTP/1.1, Connection: close): the body.
fn http_get_blocking(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

/// A DevTools session on one page: commands by id, events kept for inspection.
struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    fn open(url: &str) -> Page {
        let hostport = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws url");
        let stream = TcpStream::connect(hostport).expect("connect devtools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(url, stream).expect("devtools handshake");
        Page {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends a command and returns its result (panics on a protocol error).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).expect("send");
        // Bounded: the socket's read timeout ends a silent wait; this bounds a chatty one.
        for _ in 0..100_000 {
            let m = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    panic!("{method}: no answer")
                }
                Err(e) => panic!("{method}: {e}"),
            };
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("devtools json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
        panic!("{method}: no answer among 100000 messages");
    }

    /// Evaluates a JavaScript expression returning a string.
    fn eval(&mut self, expr: &str) -> String {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Console errors, uncaught exceptions and error log entries seen so far.
    fn errors(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => e["params"]["type"] == "error",
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .cloned()
            .collect()
    }
}

/// Standard base64 (the screenshot), without padding checks.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn screenshot_path() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    dir.join("status-page.png")
}

/// Polls `expr` on the page until `ok` accepts it (at most 30 s).
fn wait_for(page: &mut Page, what: &str, expr: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = page.eval(expr);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: page shows {v:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_live_topic_and_a_dead_letter_alert_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: {CHROMIUM} is missing, so the status page was NOT tested in a\n\
             browser. Install it: apt-get install -y chromium chromium-driver\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }
    let broker = BrokerProcess::start();
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("clicks", 2, Default::default())
        .await
        .expect("create");
    let producer = Producer::builder(&client)
        .acks(Acks::Leader)
        .linger(Duration::from_millis(1))
        .build()
        .await
        .expect("producer");
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("clicks", format!("c{i}")))
            .await
            .expect("produce");
    }
    // A dead-lettered record: the page must list the alert.
    let q = QueueConsumer::with_config(
        &client,
        "billing",
        "clicks",
        QueueConfig {
            consumer: "it".into(),
            lease: Duration::from_secs(30),
            max_wait: Duration::from_millis(100),
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        assert!(Instant::now() < deadline, "nothing to dead-letter");
        if let Some(m) = q.fetch(1).await.expect("queue fetch").pop() {
            break m;
        }
    };
    assert_eq!(
        q.nack(&m, false, "poison").await.expect("nack"),
        NackOutcome::DeadLettered
    );

    let url = format!("http://{}/", broker.http_addr());
    // The browser is driven on a blocking thread; the test's runtime keeps producing.
    let driver = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        let mut page = Page::open(&browser.page_ws());
        page.call("Runtime.enable", json!({}));
        page.call("Log.enable", json!({}));
        page.call("Page.enable", json!({}));
        page.call("Page.navigate", json!({ "url": url }));
        let records = "(document.querySelector('#topics tr[data-key=\"clicks\"] .records') || {}).textContent || ''";
        let first = wait_for(&mut page, "the topic", records, |v| !v.is_empty());
        let first: u64 = first.parse().expect("a record count");
        // The same page, without reloading, shows the count rising while the test
        // produces.
        let later = wait_for(&mut page, "a rising record count", records, |v| {
            v.parse::<u64>().is_ok_and(|n| n > first)
        });
        let alerts = wait_for(
            &mut page,
            "the dead-letter alert",
            "Array.from(document.querySelectorAll('#alerts li')).map(l => (l.dataset.rule || '') + ' ' + l.textContent).join('\\n')",
            |v| v.contains("dead_letter"),
        );
        let overall = page.eval("document.getElementById('overall').textContent");
        let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        let path = screenshot_path();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("target dir");
        std::fs::write(&path, &png).expect("write screenshot");
        let errors = page.errors();
        (first, later, alerts, overall, png, errors)
    });
    // Produce all along (every 20 ms, at most 60 s) while the page watches.
    let producing = tokio::spawn(async move {
        for i in 0..3000u64 {
            let _ = producer
                .send_and_wait(ProducerRecord::new("clicks", format!("more{i}")))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (first, later, alerts, overall, png, errors) = driver.await.expect("browser driver");
    producing.abort();
    eprintln!("status page: records {first} -> {later}; overall {overall}; alerts:\n{alerts}");
    assert!(later.parse::<u64>().unwrap() > first);
    assert!(
        alerts.contains("billing") && alerts.contains("clicks"),
        "{alerts}"
    );
    assert!(
        ["healthy", "degraded", "critical"].contains(&overall.as_str()),
        "{overall}"
    );
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
