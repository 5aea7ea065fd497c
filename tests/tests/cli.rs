//! The command line: exit codes, configuration errors, `herald dev` and `herald stream info`.

use herald_tests::{Herald, Nats, herald_output};

#[test]
fn bad_configuration_exits_64_with_one_line_naming_each_setting() {
    let out = herald_output(
        &[
            "sidecar",
            "--listen",
            "nowhere",
            "--publish-timeout",
            "soon",
        ],
        &[("HERALD_MAX_BODY_BYTES", "huge")],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for needle in [
        "--listen",
        "--publish-timeout",
        "HERALD_MAX_BODY_BYTES",
        "--app-id",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let out = herald_output(&["sidecar", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn dev_without_nats_server_says_how_to_install_it_and_exits_69() {
    let out = herald_output(
        &["dev", "--nats-server-bin", "/nonexistent/nats-server"],
        &[],
    );
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("apt-get install nats-server"), "{err}");
}

#[tokio::test]
async fn dev_starts_its_own_server_creates_the_streams_and_stream_info_shows_them() {
    let h = Herald::start("dev", &[]).await;
    h.wait_ready().await;
    let r = reqwest::Client::new()
        .post(format!("{}/events/order.created.v1", h.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let log = h.log_text();
    let url = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nats_url="))
        .expect("dev logs the embedded server's URL")
        .to_owned();
    let out = tokio::task::spawn_blocking(move || {
        herald_output(&["stream", "info", "--nats-url", &url], &[])
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("HERALD "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<_> = row.split_whitespace().collect();
    assert_eq!(cols[1], "1", "{text}");
    assert!(text.lines().any(|l| l.starts_with("HERALD_DLQ")), "{text}");
}

#[tokio::test]
async fn stream_info_reads_the_url_from_the_environment() {
    let nats = Nats::start();
    nats.create_streams().await;
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        herald_output(&["stream", "info"], &[("HERALD_NATS_URL", &url)])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("HERALD_DLQ")
    );
}

/// `herald run` arguments against the test's nats-server, on ports the system picks.
fn run_args(nats: &Nats, app: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--nats-url",
        nats.server.url(),
        // Port 0: the app learns the publish address from HERALD_URL.
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(app.iter().map(|s| s.to_string()));
    args
}

#[test]
fn run_starts_the_app_with_herald_url_and_exits_with_its_status() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let script = format!("echo \"$HERALD_URL\" > {}; exit 3", seen.display());
    let args = run_args(&nats, &["sh", "-c", &script]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = herald_output(&args, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = std::fs::read_to_string(&seen).unwrap();
    // The app is told the address the publish API is bound to: with `--listen 127.0.0.1:0`,
    // the port the system picked, not 0.
    let port: u16 = url
        .trim()
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a loopback URL with a port: {url}"));
    assert_ne!(port, 0);

    let args = run_args(&nats, &["/nonexistent/app"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = herald_output(&args, &[]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot start the app `/nonexistent/app`"),
        "{err}"
    );
}

#[test]
fn run_stops_the_app_on_sigterm_and_reports_its_status() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (started, stopped) = (dir.path().join("started"), dir.path().join("stopped"));
    let script = format!(
        "trap 'echo term > {}; exit 7' TERM; touch {}; while :; do sleep 0.05; done",
        stopped.display(),
        started.display()
    );
    let args = run_args(&nats, &["sh", "-c", &script]);
    let mut child = std::process::Command::new(herald_tests::herald_bin())
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !started.exists() {
        assert!(std::time::Instant::now() < until, "the app never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    assert_eq!(std::fs::read_to_string(&stopped).unwrap().trim(), "term");
}

#[tokio::test]
async fn wait_returns_once_the_sidecar_serves_and_fails_after_its_timeout() {
    let h = Herald::start("dev", &[]).await;
    let admin = h.admin.trim_start_matches("http://").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        herald_output(&["wait", "--admin-listen", &admin, "--timeout", "5s"], &[])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // 0.0.0.0 (the sidecar's own default) is asked on loopback.
    let port = h.admin.rsplit(':').next().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        herald_output(
            &["wait", "--timeout", "5s"],
            &[("HERALD_ADMIN_LISTEN", &format!("0.0.0.0:{port}"))],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(h);

    // A port that takes connections (the kernel's backlog) and never answers: this test owns it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let out = herald_output(
        &[
            "wait",
            "--admin-listen",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "300ms",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "did not answer http://127.0.0.1:{port}/healthz within 300ms"
        )),
        "{err}"
    );
    drop(silent);
    let out = herald_output(&["wait", "--timeout", "never"], &[]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn nats_credentials_must_be_a_readable_credentials_file() {
    let out = herald_output(
        &[
            "sidecar",
            "--app-id",
            "a",
            "--nats-creds",
            "/nonexistent/nats.creds",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--nats-creds=\"/nonexistent/nats.creds\": cannot read"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats.creds");
    std::fs::write(&file, "user: alice\npassword: secret\n").unwrap();
    let out = herald_output(
        &["sidecar", "--app-id", "a"],
        &[("HERALD_NATS_CREDS", file.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("HERALD_NATS_CREDS") && err.contains("not a NATS credentials file"),
        "{err}"
    );
}
