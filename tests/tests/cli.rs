//! The `weir` CLI happy path against a real broker: create a topic, pipe lines through
//! `weir produce --acks durable`, read them back with `weir consume` in a group, and a
//! second run of the group prints only what is newer.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir_tests::{cli_binary, BrokerProcess};

/// Longest any one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `weir --broker ADDR ARGS...` with `stdin` piped in; kills it after [`CLI_TIMEOUT`].
fn weir(broker: &BrokerProcess, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(cli_binary())
        .arg("--broker")
        .arg(broker.addr())
        .args(args)
        .env_remove("WEIR_BROKER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let deadline = Instant::now() + CLI_TIMEOUT;
    while child.try_wait().expect("wait weir").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "weir {args:?} did not exit within {CLI_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
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
