//! The console in a real browser: headless Chromium driven through WebDriver (chromedriver),
//! against a real kube-apiserver, nats-server and herald sidecars. alice signs in with her token,
//! sees an event published through a sidecar in the catalog and in the topology, creates a
//! trigger in the form (the CESQL field checked as she types) and the next event reaches the
//! target app; an event its app refuses is dead-lettered, listed on the page and replayed from
//! it; the topology at 50 apps; bob, without rights, sees the 403 message. Each page is saved as a screenshot in
//! `target/console-screenshots/` (docs/CONSOLE.md shows them).
//!
//! Needs the Kubernetes test kit (`HERALD_TEST_K8S`), `chromium` and `chromedriver` (Debian's
//! `chromium` and `chromium-driver`; `HERALD_TEST_CHROMIUM` and `HERALD_TEST_CHROMEDRIVER` name
//! others); without them the test says what it skipped and passes.

mod console_kit;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use console_kit::ConsoleKit;
use fantoccini::{Client, ClientBuilder, Locator};
use herald_tests::sink::Sink;
use herald_tests::{Herald, eventually};
use serde_json::json;

/// chromedriver on a free port, in a process group of its own; on drop the whole group is
/// killed, so the Chromium it started goes too even when the test failed before closing it.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(var: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    path.is_file().then_some(path)
}

async fn driver(bin: &PathBuf) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    use std::os::unix::process::CommandExt as _;
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    eventually(Duration::from_secs(20), "chromedriver answers", || {
        let status = status.clone();
        async move {
            reqwest::get(&status)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    Driver { child, url }
}

async fn browser(driver: &Driver, chromium: &PathBuf) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--force-device-scale-factor=1"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Waits until the element's text holds `needle` (the page polls the API every 3 s).
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let until = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < until {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if t.contains(needle) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not within 40s: {css} showing {needle:?}; it shows {last:?}");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear()
        .await
        .unwrap_or_else(|e| panic!("clear {css}: {e}"));
    e.send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write the screenshot");
}

/// Publishes one event of source `checkout` through the sidecar.
async fn publish(h: &Herald, id: &str, data: &str) {
    let r = herald_tests::binary(&h.url, id, "checkout", "order.paid.v1")
        .header("content-type", "application/json")
        .body(data.to_owned())
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn the_console_in_a_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        tool("HERALD_TEST_CHROMIUM", "/usr/bin/chromium"),
        tool("HERALD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        eprintln!(
            "SKIPPED the_console_in_a_browser: chromium or chromedriver not found (apt-get install chromium chromium-driver; scripts/test does)"
        );
        return;
    };
    let Some(kit) = ConsoleKit::start("the_console_in_a_browser").await else {
        return;
    };
    let nats_url = kit.nats.url();
    let sidecar = |app: &'static str, port: Option<String>| {
        let nats_url = nats_url.clone();
        async move {
            let mut args = vec![
                "--nats-url".to_owned(),
                nats_url,
                "--app-id".into(),
                app.into(),
                "--namespace".into(),
                "shop".into(),
            ];
            if let Some(p) = port {
                args.extend(["--app-port".into(), p]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let h = Herald::start("sidecar", &args).await;
            h.wait_ready().await;
            h
        }
    };
    let checkout = sidecar("checkout", None).await;
    let sink = Sink::start().await;
    let _orders = sidecar("orders", Some(sink.port.to_string())).await;
    // Pods for the two, as the webhook would have injected them (the kit's apiserver runs no
    // node; the sidecars above are their processes): the console lists them, and the controller
    // sees a running subscriber of app orders.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(kit.admin.clone(), "shop");
    for app in ["checkout", "orders"] {
        let pod = json!({
            "metadata": {"name": format!("{app}-1"), "labels": {"app": app},
                "annotations": {"herald.dev/inject": "true"}},
            "spec": {"containers": [
                {"name": "app", "image": app},
                {"name": "herald", "image": "herald", "env": [{"name": "HERALD_APP_ID", "value": app}]}
            ]}
        });
        pods.create(&Default::default(), &serde_json::from_value(pod).unwrap())
            .await
            .expect("create a pod");
    }

    let driver = driver(&chromedriver).await;
    let c = browser(&driver, &chromium).await;

    // Sign-in.
    c.goto(&kit.base).await.expect("open the console");
    wait_text(&c, "#signin", "Sign in").await;
    screenshot(&c, "signin").await;
    type_into(&c, "#token", &kit.alice).await;
    click(&c, "#signin-form button[type=submit]").await;
    wait_text(&c, "#who", "system:serviceaccount:shop:alice").await;

    // An event published through a sidecar shows in the catalog, with its sample.
    publish(&checkout, "e-1", "{\"total\":42}").await;
    wait_text(&c, "#catalog-table tbody", "order.paid.v1").await;
    click(&c, "#catalog-table tbody button").await;
    wait_text(&c, "#catalog-sample", "\"total\":42").await;
    screenshot(&c, "catalog").await;

    // A trigger from the form: app orders gets order.paid.v1 from checkout, with a CESQL
    // filter checked as it is typed.
    click(&c, "nav a[data-view=triggers]").await;
    wait_text(&c, "#namespace", "shop").await;
    click(&c, "#new-trigger").await;
    type_into(&c, "#f-name", "orders-paid").await;
    type_into(&c, "#f-target", "orders").await;
    type_into(&c, "#f-types", "order.paid.v1").await;
    type_into(&c, "#f-source", "checkout").await;
    type_into(&c, "#f-sql", "source = ").await;
    wait_text(&c, "#sql-check", "column").await;
    type_into(&c, "#f-sql", "source = 'checkout'").await;
    wait_text(&c, "#sql-check", "valid CESQL").await;
    screenshot(&c, "trigger-form").await;
    click(&c, "#trigger-form button[type=submit]").await;
    wait_text(&c, "#trigger-table tbody", "orders-paid").await;
    // The controller made its consumer and the sidecar of orders took the subscription.
    wait_text(&c, "#trigger-table tbody", "Ready").await;
    screenshot(&c, "triggers").await;

    // The next event reaches the target app.
    publish(&checkout, "e-2", "{\"total\":7}").await;
    eventually(Duration::from_secs(30), "e-2 delivered to orders", || {
        let got = sink
            .received()
            .iter()
            .any(|r| r.header("ce-id") == Some("e-2"));
        async move { got }
    })
    .await;

    // One it refuses (422) is dead-lettered; the page lists it and replays it once orders
    // accepts again.
    sink.always(422);
    publish(&checkout, "e-3", "{\"total\":0}").await;
    click(&c, "#trigger-table tbody button:nth-of-type(2)").await;
    wait_text(&c, "#dl-table tbody", "e-3").await;
    screenshot(&c, "deadletters").await;
    sink.always(204);
    click(&c, "#dl-table tbody button:nth-of-type(2)").await;
    eventually(Duration::from_secs(30), "e-3 replayed to orders", || {
        // Refused once, then received again from the replay.
        let got = sink
            .received()
            .iter()
            .filter(|r| r.header("ce-id") == Some("e-3"))
            .count()
            >= 2;
        async move { got }
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the dead letter gone from the page",
        || {
            let c = c.clone();
            async move {
                match c.find(Locator::Css("#dl-table tbody")).await {
                    Ok(e) => e.text().await.is_ok_and(|t| !t.contains("e-3")),
                    Err(_) => false,
                }
            }
        },
    )
    .await;

    // The topology: checkout → order.paid.v1 → shop/orders.
    click(&c, "nav a[data-view=topology]").await;
    wait_text(&c, "#topology-box", "shop/orders").await;
    wait_text(&c, "#topology-box", "checkout").await;
    screenshot(&c, "topology").await;

    // At 50 apps: 50 more sources publishing, each to its own app (consumers made as the
    // controller makes them, described `namespace/app/filter`), drawn whole in a tall window.
    let js = kit.nats.jetstream().await;
    let stream = js.get_stream("HERALD").await.expect("the event stream");
    for i in 0..50 {
        let (source, ty) = (format!("src-{i}"), format!("event-{i}.v1"));
        let subject = herald_core::subject::event_subject(&source, &ty);
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(format!("fifty-{i}")),
                description: Some(format!("shop/app-{i}/{source}/{ty}")),
                filter_subject: subject.clone(),
                ..Default::default()
            })
            .await
            .expect("a consumer");
        let mut h = async_nats::HeaderMap::new();
        h.insert("ce-specversion", "1.0");
        h.insert("ce-id", format!("f-{i}").as_str());
        h.insert("ce-source", source.as_str());
        h.insert("ce-type", ty.as_str());
        js.publish_with_headers(subject, h, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    wait_text(&c, "#topology-box", "shop/app-49").await;
    c.set_window_size(1280, 2750).await.expect("a tall window");
    tokio::time::sleep(Duration::from_millis(500)).await;
    screenshot(&c, "topology-50").await;
    c.set_window_size(1280, 1000)
        .await
        .expect("the window back");

    // Streams.
    click(&c, "nav a[data-view=streams]").await;
    wait_text(&c, "#stream-table tbody", "HERALD").await;
    screenshot(&c, "streams").await;

    // bob may not read the streams' contents: the page says so.
    click(&c, "#signout").await;
    wait_text(&c, "#signin", "Sign in").await;
    type_into(&c, "#token", &kit.bob).await;
    click(&c, "#signin-form button[type=submit]").await;
    wait_text(&c, "#who", "system:serviceaccount:shop:bob").await;
    let banner = wait_text(&c, "#banner", "Not allowed").await;
    assert!(
        banner.contains("may not list eventstreams.herald.dev"),
        "{banner}"
    );
    // Nothing alice saw is left on bob's screen.
    let shown = c
        .find(Locator::Css("#stream-table tbody"))
        .await
        .expect("the streams table")
        .text()
        .await
        .expect("its text");
    assert_eq!(shown, "", "bob sees what alice saw");
    screenshot(&c, "forbidden").await;

    c.close().await.expect("close the browser");
    kit.stop().await;
}
