//! Filter evaluation cost: ns per event for typical expressions, and the one-off compile cost.
//!
//! `cargo bench -p herald-cesql` (release build). The event is a `BTreeMap` of ten string
//! attributes; in the sidecar the attributes come from the stored NATS headers instead.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use herald_cesql::Expression;

const CASES: &[(&str, &str)] = &[
    ("exact type", "type = 'com.example.order.created.v1'"),
    (
        "prefix (LIKE 'x%')",
        "source LIKE 'https://shop.example.com/%'",
    ),
    (
        "two LIKEs, AND",
        "source LIKE 'https://%' AND subject LIKE '%.pdf'",
    ),
    (
        "IN + INT() compare",
        "region IN ('eu', 'us', 'apac') AND INT(amount) > 100",
    ),
    (
        "DNF, 5 comparisons",
        "(id = 'x' AND type LIKE '%.success') OR (region = 'eu' AND source LIKE 'https://%' AND type LIKE '%.v1')",
    ),
    ("general LIKE", "subject LIKE 'invoices/_%/20__-%.pdf'"),
    (
        "functions",
        "LOWER(TRIM(region)) = 'eu' AND LENGTH(subject) < 64",
    ),
    ("missing attribute (error path)", "tenant = 'acme'"),
];

fn event() -> BTreeMap<String, String> {
    [
        ("specversion", "1.0"),
        ("id", "A234-1234-1234"),
        ("source", "https://shop.example.com/orders"),
        ("type", "com.example.order.created.v1"),
        ("subject", "invoices/2026/2026-11-23.pdf"),
        ("time", "2026-11-23T12:00:00Z"),
        ("datacontenttype", "application/json"),
        ("region", "eu"),
        ("amount", "250"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Runs `f` in batches until `budget` has passed; the mean ns per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..10_000 {
        f();
    }
    let (mut calls, started) = (0u64, Instant::now());
    while started.elapsed() < budget {
        for _ in 0..10_000 {
            f();
        }
        calls += 10_000;
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let budget = Duration::from_millis(if quick { 5 } else { 1000 });
    let ev = event();
    println!(
        "{:<32} {:>10} {:>12} {:>7}",
        "expression", "ns/event", "compile ns", "passes"
    );
    for (name, src) in CASES {
        let e = Expression::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let passes = e.test(&ev);
        let eval = measure(budget, || {
            let _ = black_box(black_box(&e).test(black_box(&ev)));
        });
        let compile = measure(budget / 4, || {
            let _ = black_box(Expression::parse(black_box(src)));
        });
        let verdict = match passes {
            Ok(b) => b.to_string(),
            Err(k) => k.to_string(),
        };
        println!("{name:<32} {eval:>10.1} {compile:>12.0} {verdict:>7}");
    }
}
