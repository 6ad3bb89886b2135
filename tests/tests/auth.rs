//! Authentication, authorization and the audit log against real broker processes
//! started with `auth = "required"`: the bootstrap admin, SCRAM users (a wrong
//! password refused), API keys (a revoked key refused), ACLs with prefix patterns and
//! roles (produce, consume, delete and quota changes refused without the grant, a new
//! grant effective on an open connection), quotas keyed by the authenticated
//! principal (a runtime quota change kept across a restart), persistence across a
//! restart, a client certificate as principal, the
//! CLI, and an audit log that verifies until an entry is edited by hand.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir_client::{
    Admin, Client, ClientConfig, ClientError, Credentials, Producer, ProducerRecord, Quota,
    TlsConfig, TopicConfig,
};
use weir_protocol::messages::{AclEntry, FetchRequest, Operation, ResourceType};
use weir_protocol::ErrorCode;
use weir_tests::certs::TestCa;
use weir_tests::{cli_binary, BrokerProcess};

const WAIT: Duration = Duration::from_secs(20);
const ADMIN_PW: &str = "admin-pw";

fn start() -> BrokerProcess {
    BrokerProcess::start_with_env(&[("WEIR_AUTH", "required"), ("WEIR_ADMIN_PASSWORD", ADMIN_PW)])
}

fn config(creds: Option<Credentials>) -> ClientConfig {
    ClientConfig {
        credentials: creds,
        request_timeout: WAIT,
        ..ClientConfig::default()
    }
}

fn password(user: &str, pw: &str) -> Option<Credentials> {
    Some(Credentials::Password {
        user: user.into(),
        password: pw.into(),
    })
}

async fn login(broker: &BrokerProcess, user: &str, pw: &str) -> Client {
    Client::connect_with(broker.addr(), config(password(user, pw)))
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e}"))
}

/// The broker's error code, or a panic naming what happened instead.
fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Broker { code, .. }) => code,
        other => panic!("expected a broker refusal, got {other:?}"),
    }
}

fn grant(principal: &str, resource: ResourceType, pattern: &str, op: Operation) -> AclEntry {
    AclEntry {
        principal: principal.into(),
        resource_type: resource,
        pattern: pattern.into(),
        operation: op,
    }
}

async fn fetch(client: &Client, topic: &str) -> Result<weir_protocol::ResponseBody, ClientError> {
    client
        .call(FetchRequest {
            topic: topic.into(),
            shard: 0,
            offset: 0,
            max_bytes: 1 << 20,
            min_bytes: 0,
            max_wait_ms: 0,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_keys_and_grants_decide_who_may_do_what() {
    let mut broker = start();
    // Unauthenticated: the handshake works, nothing else does.
    let anonymous = Client::connect(broker.addr()).await.expect("handshake");
    assert_eq!(
        code(Admin::new(anonymous).list_topics().await),
        ErrorCode::AuthenticationRequired
    );
    // A wrong password, and an unknown user, fail alike.
    let wrong = Client::connect_with(broker.addr(), config(password("admin", "guess"))).await;
    assert_eq!(code(wrong), ErrorCode::AuthenticationFailed);
    let nobody = Client::connect_with(broker.addr(), config(password("nobody", "x"))).await;
    assert_eq!(code(nobody), ErrorCode::AuthenticationFailed);

    let admin = Admin::new(login(&broker, "admin", ADMIN_PW).await);
    admin
        .create_topic("orders.eu", 1, TopicConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("payments", 1, TopicConfig::default())
        .await
        .unwrap();
    assert!(admin.upsert_user("alice", "alice-pw").await.unwrap());
    assert!(admin
        .alter_acl(
            grant("alice", ResourceType::Topic, "orders.*", Operation::Produce),
            false
        )
        .await
        .unwrap());

    let alice = login(&broker, "alice", "alice-pw").await;
    let producer = Producer::builder(&alice).build().await.unwrap();
    producer
        .send_and_wait(ProducerRecord::new("orders.eu", "one"))
        .await
        .expect("alice may produce to orders.*");
    let refused = producer
        .send_and_wait(ProducerRecord::new("payments", "two"))
        .await;
    assert_eq!(code(refused), ErrorCode::NotAuthorized);
    assert_eq!(
        code(fetch(&alice, "orders.eu").await),
        ErrorCode::NotAuthorized
    );
    let alice_admin = Admin::new(alice.clone());
    assert_eq!(
        code(alice_admin.delete_topic("orders.eu").await),
        ErrorCode::NotAuthorized
    );
    assert_eq!(
        code(alice_admin.set_quota("alice", Quota::default()).await),
        ErrorCode::NotAuthorized
    );
    assert_eq!(
        code(alice_admin.upsert_user("eve", "x").await),
        ErrorCode::NotAuthorized
    );

    // A role's grant reaches alice's open connection once she is given the role.
    admin
        .alter_acl(
            grant(
                "role:readers",
                ResourceType::Topic,
                "orders.*",
                Operation::Consume,
            ),
            false,
        )
        .await
        .unwrap();
    admin
        .alter_acl(
            grant("alice", ResourceType::Role, "readers", Operation::Member),
            false,
        )
        .await
        .unwrap();
    fetch(&alice, "orders.eu")
        .await
        .expect("consume through the role");

    // API keys: work until revoked.
    let key = admin.create_api_key("svc", "billing job").await.unwrap();
    admin
        .alter_acl(
            grant("svc", ResourceType::Topic, "payments", Operation::Produce),
            false,
        )
        .await
        .unwrap();
    let svc = Client::connect_with(
        broker.addr(),
        config(Some(Credentials::ApiKey(key.key.clone()))),
    )
    .await
    .expect("the key authenticates");
    Producer::builder(&svc)
        .build()
        .await
        .unwrap()
        .send_and_wait(ProducerRecord::new("payments", "paid"))
        .await
        .expect("svc may produce to payments");
    let listed = admin.list_api_keys().await.unwrap();
    assert!(listed
        .iter()
        .any(|k| k.key_id == key.key_id && k.principal == "svc"));
    admin.revoke_api_key(&key.key_id).await.unwrap();
    let revoked = Client::connect_with(
        broker.addr(),
        config(Some(Credentials::ApiKey(key.key.clone()))),
    )
    .await;
    assert_eq!(code(revoked), ErrorCode::AuthenticationFailed);
    let secrets = std::fs::read_to_string(broker.data_dir().join("security.json")).unwrap();
    assert!(
        !secrets.contains(&key.key[20..]),
        "the key's secret is not stored"
    );
    assert!(!secrets.contains("alice-pw"), "passwords are not stored");

    // Quotas follow the authenticated principal, whatever client id is claimed.
    admin
        .set_quota(
            "alice",
            Quota {
                max_connections: 1,
                ..Quota::default()
            },
        )
        .await
        .unwrap();
    let second = Client::connect_with(
        broker.addr(),
        ClientConfig {
            client_id: "someone-else".into(),
            ..config(password("alice", "alice-pw"))
        },
    )
    .await;
    assert_eq!(code(second), ErrorCode::Throttled);

    // Users and grants survive a restart; the bootstrap password is not re-applied.
    drop((producer, alice, alice_admin, svc));
    broker.terminate();
    broker.restart();
    let alice = login(&broker, "alice", "alice-pw").await;
    fetch(&alice, "orders.eu").await.expect("grants persisted");
    // The runtime quota change was recorded too.
    let second = Client::connect_with(broker.addr(), config(password("alice", "alice-pw"))).await;
    assert_eq!(
        code(second),
        ErrorCode::Throttled,
        "quota kept across the restart"
    );
    let admin = Admin::new(login(&broker, "admin", ADMIN_PW).await);
    let q = admin.describe_quotas(&["alice"]).await.unwrap();
    assert_eq!(q[0].quota.max_connections, 1);

    // The audit log holds the attempts, the refusals and the changes, and verifies.
    let log = std::fs::read_to_string(broker.data_dir().join("audit.log")).unwrap();
    for needle in [
        "\"action\":\"bootstrap_admin\"",
        "failed: unknown user or wrong password",
        "\"action\":\"denied\"",
        "\"action\":\"create_topic\",\"target\":\"payments\"",
        "\"action\":\"revoke_api_key\"",
        "\"action\":\"add_acl\"",
    ] {
        assert!(log.contains(needle), "audit log lacks {needle}:\n{log}");
    }
    assert!(weir_broker_verify(&log).is_ok());
}

fn weir_broker_verify(text: &str) -> Result<u64, String> {
    let out = run_weir(None, &["audit", "verify", "--file", &write_temp(text)]);
    if out.status.success() {
        Ok(0)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn write_temp(text: &str) -> String {
    let dir = tempfile::Builder::new()
        .prefix("weir-audit-")
        .tempdir()
        .unwrap();
    let path = dir.keep().join("audit.log");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Runs `weir [--broker ADDR] ARGS...`, killed after [`WAIT`].
fn run_weir(addr: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(cli_binary());
    if let Some(a) = addr {
        cmd.arg("--broker").arg(a);
    }
    for k in [
        "WEIR_BROKER",
        "WEIR_USER",
        "WEIR_PASSWORD",
        "WEIR_API_KEY",
        "WEIR_TLS_CA",
    ] {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weir {args:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("weir output")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_cli_manages_users_grants_and_verifies_the_audit_log() {
    let broker = start();
    let addr = broker.addr();
    let admin = ["--user", "admin", "--password", ADMIN_PW];
    fn with<'a>(admin: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
        [admin, rest].concat()
    }
    let with = |rest: &[&'static str]| with(&admin, rest);
    ok(&run_weir(
        Some(&addr),
        &with(&["user", "add", "bob", "--password", "bob-pw"]),
    ));
    ok(&run_weir(Some(&addr), &with(&["topic", "create", "logs"])));
    ok(&run_weir(
        Some(&addr),
        &with(&[
            "acl", "add", "--user", "bob", "--topic", "logs", "--op", "produce",
        ]),
    ));
    let listed = ok(&run_weir(
        Some(&addr),
        &with(&["acl", "list", "--user", "bob"]),
    ));
    assert!(listed.contains("bob\ttopic\tlogs\tproduce"), "{listed}");
    assert!(ok(&run_weir(Some(&addr), &with(&["user", "list"]))).contains("bob"));
    // bob may produce to logs but not list topics (a cluster describe).
    let bob = ["--user", "bob", "--password", "bob-pw"];
    let out = run_weir(Some(&addr), &[&bob[..], &["topic", "list"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_AUTHORIZED"));
    let out = run_weir(
        Some(&addr),
        &["--user", "bob", "--password", "nope", "topic", "list"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTHENTICATION_FAILED"));
    // API keys from the CLI.
    let key = ok(&run_weir(
        Some(&addr),
        &with(&["key", "create", "--principal", "bob"]),
    ));
    let key = key.trim();
    assert!(key.starts_with("wk_"), "{key}");
    assert!(ok(&run_weir(Some(&addr), &with(&["key", "list"]))).contains("bob"));

    let data = broker.data_dir().display().to_string();
    let verified = ok(&run_weir(None, &["audit", "verify", "--data-dir", &data]));
    assert!(verified.contains("chain intact"), "{verified}");
    let shown = ok(&run_weir(None, &["audit", "show", "--data-dir", &data]));
    assert!(shown.contains("upsert_user\tbob"), "{shown}");

    // An entry edited by hand: verify fails and names it.
    let text = std::fs::read_to_string(broker.data_dir().join("audit.log")).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"target\":\"bob\""))
        .expect("an entry about bob")
        + 1;
    let edited = text.replacen("\"target\":\"bob\"", "\"target\":\"eve\"", 1);
    let file = write_temp(&edited);
    let out = run_weir(None, &["audit", "verify", "--file", &file]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("line {line}:")), "{err}");
    assert!(err.contains("was changed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let server = ca.server(dir.path(), "server");
    let (cert, key, client_ca) = (
        server.cert.display().to_string(),
        server.key.display().to_string(),
        ca.cert.display().to_string(),
    );
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_AUTH", "required"),
        ("WEIR_ADMIN_PASSWORD", ADMIN_PW),
        ("WEIR_TLS_CERT", &cert),
        ("WEIR_TLS_KEY", &key),
        ("WEIR_TLS_CLIENT_CA", &client_ca),
    ]);
    let tls = |files: &weir_tests::certs::CertFiles| TlsConfig {
        ca: ca.cert.clone(),
        cert: Some(files.cert.clone()),
        key: Some(files.key.clone()),
        server_name: None,
    };
    let admin_cert = ca.client(dir.path(), "ops-console", false);
    let admin = Client::connect_with(
        broker.addr(),
        ClientConfig {
            tls: Some(tls(&admin_cert)),
            ..config(password("admin", ADMIN_PW))
        },
    )
    .await
    .unwrap();
    Admin::new(admin)
        .alter_acl(
            grant(
                "orders-service",
                ResourceType::Cluster,
                "*",
                Operation::Describe,
            ),
            false,
        )
        .await
        .unwrap();
    // No password: the certificate is the identity.
    let svc_cert = ca.client(dir.path(), "orders-service", false);
    let svc = Client::connect_with(
        broker.addr(),
        ClientConfig {
            tls: Some(tls(&svc_cert)),
            ..config(None)
        },
    )
    .await
    .unwrap();
    Admin::new(svc.clone())
        .list_topics()
        .await
        .expect("granted by certificate name");
    assert_eq!(
        code(
            Admin::new(svc)
                .create_topic("t", 1, TopicConfig::default())
                .await
        ),
        ErrorCode::NotAuthorized
    );
    let other_cert = ca.client(dir.path(), "stranger", false);
    let other = Client::connect_with(
        broker.addr(),
        ClientConfig {
            tls: Some(tls(&other_cert)),
            ..config(None)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        code(Admin::new(other).list_topics().await),
        ErrorCode::NotAuthorized
    );
}
