//! The `weir` CLI happy path against a real broker: create a topic, pipe lines through
//! `weir produce --acks durable`, read them back with `weir consume` in a group, and a
//! second run of the group prints only what is newer.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir_tests::{cli_binary, damage_first, BrokerProcess};

/// Longest any one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `weir --broker ADDR ARGS...` with `stdin` piped in; kills it after [`CLI_TIMEOUT`].
fn weir(broker: &BrokerProcess, args: &[&str], stdin: &str) -> Output {
    weir_with(broker, args, stdin.as_bytes(), &[])
}

/// [`weir`] with raw bytes on standard input and extra environment variables.
fn weir_with(broker: &BrokerProcess, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(cli_binary())
        .arg("--broker")
        .arg(broker.addr())
        .args(args)
        .env_remove("WEIR_BROKER")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    // Drained while the command runs, so a long output cannot fill the pipe and stall it.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let mut input = child.stdin.take().expect("stdin");
    // The command may stop reading early (a bad line stops `weir produce`).
    if let Err(e) = input.write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    drop(input);
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait weir") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "weir {args:?} did not exit within {CLI_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr.join().expect("stderr"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

fn ok(broker: &BrokerProcess, args: &[&str], stdin: &str) -> Vec<String> {
    let out = weir(broker, args, stdin);
    assert!(
        out.status.success(),
        "weir {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8 stdout")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn create_produce_consume_and_resume_with_a_group() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "lines", "--shards", "2"], "");

    let first: Vec<String> = (0..30)
        .map(|i| format!("line {i:02} of the first batch"))
        .collect();
    // One key, so one shard, so the order printed is the order produced.
    ok(
        &broker,
        &["produce", "lines", "--key", "k", "--acks", "durable"],
        &(first.join("\n") + "\n"),
    );
    let printed = ok(
        &broker,
        &[
            "consume",
            "lines",
            "--from-beginning",
            "--group",
            "G",
            "--count",
            "30",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    assert_eq!(
        printed, first,
        "the first consume prints every line in order"
    );

    let second: Vec<String> = (0..5).map(|i| format!("newer {i}")).collect();
    ok(
        &broker,
        &["produce", "lines", "--key", "k", "--acks", "durable"],
        &(second.join("\n") + "\n"),
    );
    let printed = ok(
        &broker,
        &["consume", "lines", "--group", "G", "--timeout-ms", "1500"],
        "",
    );
    assert_eq!(
        printed, second,
        "the group's second run prints only newer messages"
    );

    // Producing to a topic that does not exist fails loudly.
    let out = weir(
        &broker,
        &["produce", "no-such-topic", "--acks", "durable"],
        "x\n",
    );
    assert!(
        !out.status.success(),
        "produce to an unknown topic must exit non-zero"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("unknown_topic")
            || stderr.contains("unknown topic")
            || stderr.contains("no-such-topic"),
        "stderr names the problem: {stderr}"
    );
}

/// Runs `weir` with `args` and fails the test unless it exits non-zero; returns stderr.
fn fails(broker: &BrokerProcess, args: &[&str], stdin: &str) -> String {
    let out = weir(broker, args, stdin);
    assert!(
        !out.status.success(),
        "weir {args:?} should fail ({}); stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every value of `topic` from the beginning, as `weir consume` prints them.
fn all_values(broker: &BrokerProcess, topic: &str) -> Vec<String> {
    ok(
        broker,
        &["consume", topic, "--from-beginning", "--timeout-ms", "0"],
        "",
    )
}

/// A `weir` child left running: its stdout lines arrive on a channel (so reads can
/// time out), its stderr is collected. Dropping it kills the child.
struct Running {
    child: std::process::Child,
    lines: Option<std::sync::mpsc::Receiver<String>>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    fn start(broker: &BrokerProcess, args: &[&str], by_line: bool) -> Running {
        let mut child = Command::new(cli_binary())
            .arg("--broker")
            .arg(broker.addr())
            .args(args)
            .env_remove("WEIR_BROKER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let mut err = child.stderr.take().expect("stderr");
        let stderr = Some(std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        }));
        let out = child.stdout.take().expect("stdout");
        let (lines, stdout) = if by_line {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { return };
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            });
            (Some(rx), None)
        } else {
            (None, Some(out))
        };
        Running {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// The next `n` lines of stdout; panics if they do not come within [`CLI_TIMEOUT`].
    fn read_lines(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + CLI_TIMEOUT;
        let rx = self.lines.as_ref().expect("started by line");
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                rx.recv_timeout(left)
                    .unwrap_or_else(|e| panic!("line {i} of {n} did not come: {e}"))
            })
            .collect()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, not yet waited for, so its pid is ours.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits (at most [`CLI_TIMEOUT`]) for the exit; returns the status and stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait weir") {
                break s;
            }
            assert!(Instant::now() < deadline, "weir did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self.stderr.take().expect("stderr").join().expect("stderr");
        (status, String::from_utf8_lossy(&err).into_owned())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("line {i:06}")).collect()
}

fn input(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

// ---- issue 22, item 8: small ones ----

#[test]
fn zero_shards_is_refused() {
    let broker = BrokerProcess::start();
    let err = fails(&broker, &["topic", "create", "t", "--shards", "0"], "");
    assert!(err.contains("--shards"), "stderr names the flag: {err}");
    let err = fails(&broker, &["topic", "describe", "t"], "");
    assert!(err.contains("t"), "no topic was made: {err}");
}

/// Issue 22 §4: a topic's message limit (and segment size) can be set from the CLI,
/// and the limit is enforced: a line over it is refused naming the setting.
#[test]
fn topic_create_sets_the_message_limit() {
    let broker = BrokerProcess::start();
    ok(
        &broker,
        &[
            "topic",
            "create",
            "small",
            "--segment-bytes",
            "1048576",
            "--max-message-bytes",
            "65536",
        ],
        "",
    );
    let described = ok(&broker, &["topic", "describe", "small"], "").join("\n");
    assert!(described.contains("65536"), "{described}");
    let big = "x".repeat(100_000) + "\n";
    let err = fails(&broker, &["produce", "small"], &big);
    assert!(err.contains("max_message_bytes"), "{err}");
}

#[test]
fn errors_print_no_backtrace_even_with_rust_backtrace_set() {
    let broker = BrokerProcess::start();
    let out = weir_with(
        &broker,
        &["topic", "describe", "missing"],
        b"",
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("Error: "), "the error is printed: {err}");
    assert!(
        !err.to_lowercase().contains("backtrace"),
        "no backtrace on stderr: {err}"
    );
}

#[test]
fn dead_letter_commands_before_any_dead_letter_say_zero() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "jobs"], "");
    let list = ok(&broker, &["dlq", "list", "jobs"], "");
    assert_eq!(list.len(), 1, "one line: {list:?}");
    assert!(list[0].starts_with("0 records in jobs.dlq"), "{list:?}");
    let show = ok(&broker, &["dlq", "show", "jobs"], "");
    assert!(show.is_empty(), "no JSON lines: {show:?}");
    let replay = ok(&broker, &["dlq", "replay", "jobs"], "");
    assert!(replay[0].starts_with("replayed 0 of 0"), "{replay:?}");
    // A topic that does not exist at all is still an error.
    let err = fails(&broker, &["dlq", "list", "nope"], "");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn queue_status_takes_the_topic_first_or_as_a_flag() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "jobs"], "");
    ok(&broker, &["topic", "create", "other"], "");
    ok(&broker, &["produce", "jobs"], "a\n");
    // Leasing creates the queue (jobs, Q).
    let got = ok(
        &broker,
        &[
            "consume", "jobs", "--mode", "queue", "--group", "Q", "--count", "1",
        ],
        "",
    );
    assert_eq!(got, ["a"]);
    let by_arg = ok(&broker, &["queue", "status", "jobs"], "");
    assert_eq!(by_arg[0], "1 queues", "{by_arg:?}");
    assert!(by_arg[1].contains("Q on jobs"), "{by_arg:?}");
    let by_flag = ok(&broker, &["queue", "status", "--topic", "jobs"], "");
    assert_eq!(by_flag[0], "1 queues");
    let other = ok(&broker, &["queue", "status", "other"], "");
    assert_eq!(other[0], "0 queues", "{other:?}");
}

#[test]
fn queue_mode_prints_in_the_format_asked_for() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "jobs"], "");
    ok(&broker, &["produce", "jobs", "--key", "k"], "one\ntwo\n");
    let got = ok(
        &broker,
        &[
            "consume", "jobs", "--mode", "queue", "--group", "Q", "--count", "2", "--format",
            "json",
        ],
        "",
    );
    assert_eq!(got.len(), 2, "{got:?}");
    for (line, want) in got.iter().zip(["one", "two"]) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert_eq!(v["value"], want);
        assert_eq!(v["key"], "k");
        assert_eq!(v["topic"], "jobs");
    }
}

#[test]
fn a_line_too_large_for_the_topic_names_the_topic_limit() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "big"], "");
    let mut line = vec![b'x'; 20 << 20];
    line.push(b'\n');
    let mut stdin = b"small\n".to_vec();
    stdin.extend_from_slice(&line);
    let out = weir_with(&broker, &["produce", "big"], &stdin, &[]);
    assert!(!out.status.success(), "the big line stops the run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "names the line: {err}");
    assert!(
        err.contains("max_message_bytes"),
        "names the topic's limit: {err}"
    );
    assert!(!err.contains("max_batch_bytes"), "no SDK setting: {err}");
    assert_eq!(all_values(&broker, "big"), ["small"]);
}

// ---- issue 22, item 6: a group commits what it printed, on every way out ----

#[test]
fn timeout_zero_prints_every_waiting_message() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t", "--shards", "3"], "");
    let lines = numbered(3000);
    ok(
        &broker,
        &["produce", "t", "--acks", "durable"],
        &input(&lines),
    );
    let mut got = ok(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "0",
        ],
        "",
    );
    got.sort();
    assert_eq!(got, lines);
}

#[test]
fn sigterm_commits_what_was_printed() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    let lines = numbered(30);
    ok(&broker, &["produce", "t", "--key", "k"], &input(&lines));
    let mut c = Running::start(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "600000",
            "--commit-interval-ms",
            "600000",
        ],
        true,
    );
    assert_eq!(c.read_lines(30), lines);
    c.signal(libc::SIGTERM);
    let (status, err) = c.wait();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM; stderr: {err}");
    let again = ok(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "0",
        ],
        "",
    );
    assert!(again.is_empty(), "nothing printed twice: {again:?}");
}

#[test]
fn a_closed_pipe_commits_exactly_what_was_written() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    // ~2 MB: far more than a pipe holds, so the consumer is still writing when the
    // reader goes away.
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("{i:06} {}", "x".repeat(90)))
        .collect();
    ok(&broker, &["produce", "t", "--key", "k"], &input(&lines));
    let mut c = Running::start(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "600000",
        ],
        false,
    );
    let mut head = BufReader::new(c.stdout.take().expect("stdout"));
    let mut first = Vec::new();
    for _ in 0..10 {
        let mut l = String::new();
        head.read_line(&mut l).expect("read a line");
        first.push(l.trim_end().to_string());
    }
    assert_eq!(first, lines[..10]);
    drop(head); // like `| head -n 10` exiting
    let (status, err) = c.wait();
    assert!(status.success(), "a closed pipe is not an error: {err}");
    let rest = ok(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "0",
        ],
        "",
    );
    // The second run starts right after the last line written to the pipe: at or
    // after line 10, and from there on without a gap.
    assert!(!rest.is_empty(), "the pipe cannot have taken every line");
    let start = lines
        .iter()
        .position(|l| *l == rest[0])
        .expect("a known line");
    assert!(
        start >= 10,
        "resumes after what was printed, not at {start}"
    );
    assert_eq!(rest, lines[start..]);
}

#[test]
fn a_running_group_commits_periodically() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    let lines = numbered(50);
    ok(&broker, &["produce", "t", "--key", "k"], &input(&lines));
    let mut c = Running::start(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "600000",
            "--commit-interval-ms",
            "0",
        ],
        true,
    );
    assert_eq!(c.read_lines(50), lines);
    // The commit comes while it runs; look for it a bounded number of times.
    let mut committed = Vec::new();
    for _ in 0..100 {
        committed = ok(&broker, &["offsets", "G"], "");
        if committed == ["t/0\t50"] {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(committed, ["t/0\t50"], "committed while running");
    drop(c); // SIGKILL: nothing more is committed
    let again = ok(
        &broker,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "G",
            "--timeout-ms",
            "0",
        ],
        "",
    );
    assert!(again.is_empty(), "{again:?}");
}

// ---- issue 22, item 7: produce says what became of every line ----

/// The `--report` file as JSON objects, one per input line.
fn report(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("report written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

fn statuses(r: &[serde_json::Value]) -> Vec<String> {
    r.iter()
        .map(|v| v["status"].as_str().expect("status").to_string())
        .collect()
}

#[test]
fn produce_reports_every_line_and_skips_bad_ones_when_asked() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t", "--shards", "2"], "");
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = dir.path().join("report.jsonl");
    // Line 3 has no second field; line 4 is not UTF-8 (and is sent as it is).
    let stdin = b"a 1\nb 2\nlonely\n\xff\xfe 4\n";
    let out = weir_with(
        &broker,
        &[
            "produce",
            "t",
            "--key-field",
            "2",
            "--on-bad-line",
            "skip",
            "--report",
            rep.to_str().expect("utf-8 path"),
        ],
        stdin,
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "skipped lines are not a failure: {err}"
    );
    assert!(err.contains("line 3 skipped"), "names the bad line: {err}");
    assert!(
        err.contains("3 stored") && err.contains("1 skipped"),
        "summary: {err}"
    );
    let r = report(&rep);
    assert_eq!(statuses(&r), ["stored", "stored", "skipped", "stored"]);
    for (i, v) in r.iter().enumerate() {
        assert_eq!(v["line"], i + 1);
    }
    assert!(
        r[0]["offset"].is_u64() && r[0]["shard"].is_u64(),
        "{:?}",
        r[0]
    );
    assert!(r[2]["reason"].as_str().unwrap_or("").contains("field 2"));
    // What the report says is stored is what the topic holds, bytes included.
    let out = weir_with(
        &broker,
        &["consume", "t", "--from-beginning", "--timeout-ms", "0"],
        b"",
        &[],
    );
    let mut got: Vec<&[u8]> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    got.sort();
    assert_eq!(got, [&b"a 1"[..], b"b 2", b"\xff\xfe 4"]);
}

#[test]
fn a_bad_line_stops_the_run_after_the_lines_before_it_are_stored() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    let err = fails(
        &broker,
        &["produce", "t", "--key-field", "2"],
        "a 1\nb 2\nlonely\nc 3\n",
    );
    assert!(err.contains("stopped at line 3"), "{err}");
    assert!(err.contains("2 stored"), "{err}");
    let mut got = all_values(&broker, "t");
    got.sort();
    assert_eq!(
        got,
        ["a 1", "b 2"],
        "the lines before it are stored, none after"
    );
}

#[test]
fn base64_and_hex_lines_are_decoded() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    ok(
        &broker,
        &["produce", "t", "--key", "k", "--format", "base64"],
        "aGVsbG8=\n",
    );
    ok(
        &broker,
        &["produce", "t", "--key", "k", "--format", "hex"],
        "776F726c64\n",
    );
    assert_eq!(all_values(&broker, "t"), ["hello", "world"]);
    let err = fails(&broker, &["produce", "t", "--format", "hex"], "zz\n");
    assert!(err.contains("not hex"), "{err}");
}

#[test]
fn acks_none_says_that_nothing_is_confirmed() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    let out = weir(
        &broker,
        &["produce", "t", "--acks", "none"],
        &input(&numbered(10)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--acks none"), "says so: {err}");
    assert!(err.contains("10 sent unconfirmed"), "{err}");
}

#[test]
fn a_rerun_with_the_producer_id_file_stores_nothing_twice() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t", "--shards", "3"], "");
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = dir.path().join("producer-id");
    let id = id_file.to_str().expect("utf-8 path");
    let lines = numbered(100);
    let produce = |input_lines: &[String], rep: &str| {
        let rep = dir.path().join(rep);
        let out = weir(
            &broker,
            &[
                "produce",
                "t",
                "--producer-id-file",
                id,
                "--report",
                rep.to_str().expect("utf-8 path"),
            ],
            &input(input_lines),
        );
        (out, report(&rep))
    };

    // A first run that got through line 40 and checkpointed there...
    let (out, r) = produce(&lines[..40], "r1");
    assert!(out.status.success());
    assert_eq!(r.len(), 40);
    let checkpoint_40 = std::fs::read(&id_file).expect("id file");
    // ...a run on the whole input resumes after it (input with lines appended)...
    let (out, r) = produce(&lines, "r2");
    assert!(out.status.success());
    let st = statuses(&r);
    assert!(st[..40].iter().all(|s| s == "done_earlier"), "{st:?}");
    assert!(st[40..].iter().all(|s| s == "stored"), "{st:?}");
    // ...and, to stand for a run killed after storing lines 41..100 but before its
    // checkpoint moved past line 40, the file goes back to that checkpoint.
    std::fs::write(&id_file, &checkpoint_40).expect("restore");
    let (out, r) = produce(&lines, "r3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let st = statuses(&r);
    assert!(st[..40].iter().all(|s| s == "done_earlier"), "{st:?}");
    assert!(st[40..].iter().all(|s| s == "stored_earlier"), "{st:?}");
    assert!(
        r[99]["offset"].is_u64(),
        "where the earlier run stored it: {:?}",
        r[99]
    );
    assert!(err.contains("60 already stored by an earlier run"), "{err}");
    let mut got = all_values(&broker, "t");
    got.sort();
    assert_eq!(got, lines, "every line stored exactly once");

    // Other input under the same file is refused before anything is sent.
    let other = numbered(101)[1..].to_vec();
    let (out, _) = produce(&other, "r4");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("differ"));
    assert_eq!(all_values(&broker, "t").len(), 100);
}

// ---- issue 22, item 9: an open queue breaker is explained ----

#[test]
fn an_open_queue_breaker_is_explained() {
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_QUEUE_BREAKER_MIN_SAMPLES", "5"),
        ("WEIR_QUEUE_BREAKER_FAILURE_PCT", "50"),
        ("WEIR_QUEUE_BREAKER_WINDOW_MS", "600000"),
        ("WEIR_QUEUE_BREAKER_OPEN_FOR_MS", "600000"),
    ]);
    ok(&broker, &["topic", "create", "jobs"], "");
    ok(&broker, &["produce", "jobs"], &input(&numbered(10)));
    let out = weir(
        &broker,
        &[
            "consume",
            "jobs",
            "--mode",
            "queue",
            "--group",
            "Q",
            "--nack-all",
            "--timeout-ms",
            "3000",
        ],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("paused by its circuit breaker"),
        "says why: {err}"
    );
    assert!(err.contains("outcomes in its window failed"), "{err}");
    let status = ok(&broker, &["queue", "status", "jobs"], "").join("\n");
    assert!(status.contains("breaker open because"), "{status}");
    // Until when: from the broker's own open time (600 s here, not the 30 s default).
    let left: u64 = status
        .split("half-opens in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no half-open time in {status}"));
    assert!(left > 500_000 && left <= 600_000, "{left} ms: {status}");
}

/// The user's kill rounds: `weir produce --producer-id-file` is SIGKILLed while it
/// sends (once its first checkpoint is on disk), then run again on the same input.
/// Wherever the kill landed, every line ends up stored exactly once.
#[test]
fn a_run_killed_mid_send_and_run_again_stores_every_line_once() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t", "--shards", "3"], "");
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = dir.path().join("producer-id");
    let id = id_file.to_str().expect("utf-8 path");
    let lines = numbered(100_000);
    let text = input(&lines);

    let mut child = Command::new(cli_binary())
        .arg("--broker")
        .arg(broker.addr())
        .args([
            "produce",
            "t",
            "--acks",
            "durable",
            "--producer-id-file",
            id,
        ])
        .env_remove("WEIR_BROKER")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = {
        let text = text.clone();
        // Paced (about 4 s for all of it) so the kill lands mid-run, after the first
        // checkpoint; ends with an error once the child is killed, as expected.
        std::thread::spawn(move || {
            for chunk in text.as_bytes().chunks(text.len() / 200 + 1) {
                if stdin.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Kill once some lines are settled (a bounded number of looks).
    for _ in 0..300 {
        let done = std::fs::read_to_string(&id_file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("lines_done ")?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        if done > 0 || child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    feed.join().expect("feeder");

    let out = weir(
        &broker,
        &[
            "produce",
            "t",
            "--acks",
            "durable",
            "--producer-id-file",
            id,
        ],
        &text,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the re-run completes: {err}");
    let mut got = all_values(&broker, "t");
    got.sort();
    assert_eq!(got.len(), lines.len(), "no line lost or stored twice");
    assert_eq!(got, lines);
}

/// A stored batch damaged on disk: the group prints and commits everything before it,
/// exits non-zero naming where it stopped, and a second run does not print those
/// records again.
#[test]
fn a_group_stops_at_a_corrupt_batch_without_reprinting() {
    let broker = BrokerProcess::start();
    ok(&broker, &["topic", "create", "t"], "");
    let lines = numbered(20);
    // Two produce runs: two batches, the second one to be damaged.
    ok(
        &broker,
        &["produce", "t", "--acks", "durable"],
        &input(&lines[..10]),
    );
    ok(
        &broker,
        &["produce", "t", "--acks", "durable"],
        &input(&lines[10..]),
    );
    damage_first(&broker.data_dir(), lines[15].as_bytes());

    let group = [
        "consume",
        "t",
        "--from-beginning",
        "--group",
        "G",
        "--timeout-ms",
        "0",
    ];
    let out = weir(&broker, &group, "");
    let printed = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupt batch is an error: {err}");
    // Everything before the damaged batch (batch boundaries are the producer's).
    let printed: Vec<&str> = printed.lines().collect();
    let n = printed.len();
    assert!(
        (10..=15).contains(&n),
        "printed up to the damage: {printed:?} {err}"
    );
    assert_eq!(printed, lines[..n]);
    assert!(
        err.contains(&format!("offset {n}")),
        "names where it stopped: {err}"
    );
    let again = weir(&broker, &group, "");
    assert!(!again.status.success());
    assert!(again.stdout.is_empty(), "nothing printed twice");

    // Past the damage: `--offset SHARD=OFFSET` moves the group beyond the damaged
    // batch (whose records are lost), it prints what follows, and commits it.
    let later = numbered(25);
    ok(
        &broker,
        &["produce", "t", "--acks", "durable"],
        &input(&later[20..]),
    );
    let past = [&group[..], &["--offset", "0=20"]].concat();
    let out = weir(&broker, &past, "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "past the damage: {err}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().collect::<Vec<_>>(), later[20..]);
    let rest = weir(&broker, &group, "");
    assert!(
        rest.status.success(),
        "{}",
        String::from_utf8_lossy(&rest.stderr)
    );
    assert!(
        rest.stdout.is_empty(),
        "the group's commit moved past the damage"
    );
}
