//! `docs/openapi.yaml` is true to the server: the same paths and methods as the router, and
//! schemathesis finds no 5xx and no answer outside the document.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::support::api::ApiFixture;

const DOC: &str = include_str!("../../docs/openapi.yaml");

/// Path → methods, read from the document's `paths:` block (two-space paths, four-space
/// methods).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    let mut in_paths = false;
    for line in DOC.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = Some(format!("/{path}"));
            routes.entry(format!("/{path}")).or_default();
        } else if let Some(method) = line
            .strip_prefix("    ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|m| ["get", "put", "post", "patch", "delete"].contains(m))
        {
            let path = current.clone().unwrap();
            routes.get_mut(&path).unwrap().insert(method.to_uppercase());
        }
    }
    routes
}

#[tokio::test]
async fn document_and_router_have_the_same_routes() {
    let f = ApiFixture::start("api_openapi", |_| {}).await;
    let doc = documented();
    let served: BTreeSet<String> = walhook::api::paths()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(doc.keys().cloned().collect::<BTreeSet<_>>(), served);
    for (path, methods) in &doc {
        // A method no route has: axum answers 405 with the route's methods in `Allow`.
        let concrete = path.replace("{id}", "00000000-0000-4000-8000-000000000000");
        let answer = f.api.raw("TRACE", &concrete, None, None).await;
        assert_eq!(answer.status, 405, "{path}");
        let allowed: BTreeSet<String> = answer
            .header("allow")
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(&allowed, methods, "{path}");
    }
    f.daemon.stop().await;
}

/// Runs schemathesis (from PyPI; `.ci/run` installs it, and under `CI=true` a missing
/// schemathesis fails this test instead of skipping it).
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_nonconforming_answer() {
    let present = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok();
    if !present {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "schemathesis is required under CI=true but not on PATH"
        );
        eprintln!("skipped: schemathesis not installed (pip install schemathesis)");
        return;
    }
    let f = ApiFixture::start("api_schemathesis", |_| {}).await;
    let token = f.token("fuzz", &["*"]).await;
    f.db.exec("SELECT walhook.subscribe('http://127.0.0.1:9/admin', '{orders.*}')")
        .await;
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let report = tempfile_dir();
    let out = tokio::task::spawn_blocking({
        let base = f.api.base.clone();
        move || {
            Command::new("schemathesis")
                .args(["run", doc, "--url", &base, "--header"])
                .arg(format!("Authorization: Bearer {token}"))
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
                    "--max-examples",
                    "40",
                    "--seed",
                    "1",
                    "--phases",
                    "examples,coverage,fuzzing,stateful",
                    "--report-dir",
                ])
                .arg(&report)
                .env("NO_COLOR", "1")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout.lines().rev().take(12).collect();
    eprintln!(
        "schemathesis:\n{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.daemon.stop().await;
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("walhook-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
