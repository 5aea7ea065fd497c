//! NATS authentication: a nats-server in operator mode (decentralized JWT auth, as NGS and most
//! production NATS deployments run) accepts a sidecar with `--nats-creds` and refuses one without.
//! The operator, account and user JWTs are made here with nkeys, as `nsc` would.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_tests::herald_core::broker::Admin as _;
use herald_tests::herald_core::policy::StreamPolicy;
use herald_tests::herald_jetstream::JetStream;
use herald_tests::{Herald, Nats, stored};
use nkeys::KeyPair;
use serde_json::{Value, json};

/// A JWT as nats-io/jwt encodes it: ed25519-nkey signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": uuid_like(subject),
        "iat": 1_763_856_000,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let signing_input = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signing_input.as_bytes()).unwrap());
    format!("{signing_input}.{signature}")
}

fn uuid_like(subject: &str) -> String {
    subject.chars().rev().take(20).collect()
}

struct Operator {
    server_config: String,
    creds: String,
}

fn operator() -> Operator {
    let op = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let system = KeyPair::new_account();
    let user = KeyPair::new_user();
    let op_jwt = jwt(
        &op,
        &op.public_key(),
        "herald-test",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &op,
        &account.public_key(),
        "apps",
        json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
    );
    // JetStream needs a system account for its internal subscriptions.
    let system_jwt = jwt(
        &op,
        &system.public_key(),
        "SYS",
        json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "orders",
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    Operator {
        server_config: format!(
            "operator: \"{op_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {acc}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
            acc = account.public_key(),
            sys = system.public_key(),
        ),
        creds: format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            user.seed().unwrap()
        ),
    }
}

#[tokio::test]
async fn a_sidecar_with_credentials_publishes_to_an_operator_mode_server_and_one_without_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let op = operator();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, &op.server_config).unwrap();
    let creds = dir.path().join("orders.creds");
    std::fs::write(&creds, &op.creds).unwrap();
    let nats = Nats::start_with_config(Some(config));

    let client = async_nats::ConnectOptions::new()
        .credentials(&op.creds)
        .unwrap()
        .connect(nats.url())
        .await
        .expect("the test's own credentials work");
    let js = async_nats::jetstream::new(client.clone());
    let broker = JetStream::new(client, std::time::Duration::from_secs(5), "HERALD");
    broker
        .ensure_stream(&StreamPolicy::dev_events("HERALD"))
        .await
        .unwrap();
    broker
        .ensure_stream(&StreamPolicy::dead_letters("HERALD_DLQ"))
        .await
        .unwrap();

    let with = Herald::start(
        "sidecar",
        &[
            "--nats-url",
            &nats.url(),
            "--app-id",
            "orders",
            "--nats-creds",
            creds.to_str().unwrap(),
        ],
    )
    .await;
    with.wait_connected().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/events/order.created.v1", with.url))
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(stored(&js, "HERALD").await.len(), 1);

    // Without credentials the server refuses the connection: the sidecar stays unready and
    // refuses publishes with 503 instead of accepting what it cannot store.
    let without = Herald::start(
        "sidecar",
        &["--nats-url", &nats.url(), "--app-id", "orders"],
    )
    .await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let ready = http
            .get(format!("{}/readyz", without.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .post(format!("{}/events/order.created.v1", without.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(stored(&js, "HERALD").await.len(), 1);
}
