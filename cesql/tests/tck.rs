//! The CloudEvents SQL conformance suite (TCK): every case of every file in `tests/tck/`, checked
//! for both the result and the error kind (stricter than the suite's own Go runner, which skips
//! the result when an error is expected).
//!
//! `cargo test -p herald-cesql --test tck -- --nocapture` prints the per-file counts.

use std::collections::BTreeMap;
use std::path::Path;

use herald_cesql::{ErrorKind, Expression, Value};

#[derive(serde::Deserialize)]
struct Suite {
    name: String,
    tests: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    expression: String,
    result: Option<yaml_serde::Value>,
    error: Option<String>,
    event: Option<BTreeMap<String, yaml_serde::Value>>,
    event_overrides: Option<BTreeMap<String, yaml_serde::Value>>,
}

/// Cases the engine does not pass, with the reason (documented in docs/FILTERS.md). Empty: every
/// case passes.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

fn value(v: &yaml_serde::Value) -> Value<'static> {
    match v {
        yaml_serde::Value::Bool(b) => Value::Bool(*b),
        yaml_serde::Value::Number(n) => Value::Int(
            n.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or_else(|| panic!("TCK number {n} is not a 32-bit integer")),
        ),
        yaml_serde::Value::String(s) => Value::String(s.clone().into()),
        other => panic!("unexpected TCK value {other:?}"),
    }
}

fn kind(name: &str) -> ErrorKind {
    match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        other => panic!("unknown TCK error kind {other:?}"),
    }
}

/// The event of a case: its own, or a full event (every attribute of the spec, no extensions)
/// with the overrides applied.
fn event(case: &Case) -> BTreeMap<String, Value<'static>> {
    let mut ev: BTreeMap<String, Value<'static>> = match &case.event {
        Some(e) => e.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        None => [
            ("specversion", "1.0"),
            ("id", "full-event"),
            ("source", "http://example.com/source"),
            ("type", "com.example.FullEvent"),
            ("subject", "topic"),
            ("time", "2020-03-21T12:34:56.78Z"),
            ("datacontenttype", "text/json"),
            ("dataschema", "http://example.com/schema"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.into())))
        .collect(),
    };
    for (k, v) in case.event_overrides.iter().flatten() {
        ev.insert(k.clone(), value(v));
    }
    ev
}

/// `None` if the case passes, else what went wrong.
fn run(case: &Case) -> Option<String> {
    let want_error = case.error.as_deref().map(kind);
    let expr = match Expression::parse(&case.expression) {
        Ok(e) => e,
        Err(e) if Some(e.kind) == want_error => return None,
        Err(e) => return Some(format!("did not compile: {:?} {e}", e.kind)),
    };
    if want_error == Some(ErrorKind::Parse) {
        return Some("compiled, but a parse error was expected".into());
    }
    let ev = event(case);
    let got = expr.evaluate(&ev);
    let mut problems = Vec::new();
    if let Some(want) = &case.result {
        let want = value(want);
        if got.value != want {
            problems.push(format!("result {} instead of {want}", got.value));
        }
    }
    let kinds: Vec<ErrorKind> = got.errors.iter().map(|e| e.kind).collect();
    match want_error {
        None if !kinds.is_empty() => problems.push(format!("unexpected errors {:?}", got.errors)),
        Some(k) if kinds.first() != Some(&k) => {
            problems.push(format!("error {k} expected, got {:?}", got.errors))
        }
        _ => {}
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[test]
fn every_tck_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tck");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/tck exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut total, mut passed) = (0, 0);
    let mut failures = Vec::new();
    eprintln!("{:<40} {:>6} {:>6}", "file", "passed", "cases");
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable TCK file");
        let suite: Suite =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut ok = 0;
        for case in &suite.tests {
            match run(case) {
                None => ok += 1,
                Some(why) => {
                    let known = KNOWN_FAILURES.iter().any(|(n, _)| *n == case.name);
                    if !known {
                        failures.push(format!(
                            "{file} / {} / {:?}: {why}",
                            case.name, case.expression
                        ));
                    }
                }
            }
        }
        eprintln!(
            "{file:<40} {ok:>6} {:>6}   ({})",
            suite.tests.len(),
            suite.name
        );
        total += suite.tests.len();
        passed += ok;
    }
    eprintln!("{:<40} {passed:>6} {total:>6}", "total");
    // The suite as copied has 275 cases in 18 files; fewer means the copy or the loader broke.
    assert_eq!(
        (files.len(), total),
        (18, 275),
        "TCK files and cases loaded"
    );
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed + KNOWN_FAILURES.len(), total);
}
