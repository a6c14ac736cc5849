//! The API contract (`openapi.yaml`, SPEC §10, §21) checked four ways: the file is valid
//! OpenAPI 3.1 (`openapi-spec-validator`); every route the router serves is in it and nothing
//! else is; `schemathesis` runs every operation against a live instance with Redis, an origin,
//! a warm source, persistence and auth all on, with the four checks of the issue; and a client
//! generated from it by `openapi-python-client` has every operation, imports, and runs a flow
//! through every operation against a live instance.
//!
//! The Python tools live in the virtualenv that `scripts/test.sh` creates (`target/pyenv`,
//! pinned by `tests/contract/requirements.txt`); `TIERCACHE_PYENV` points elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tiercache::config::Secret;

use crate::harness::{RedisServer, Reply, TestApp, TestOrigin};

const TOKEN: &str = "contract-token";
/// Test cases per operation and phase: enough to find shape bugs, bounded so the run takes
/// well under a minute on a 2-core machine.
const MAX_EXAMPLES: &str = "60";
/// A fixed seed keeps CI reproducible; `TIERCACHE_SCHEMATHESIS_SEED` explores others.
const DEFAULT_SEED: &str = "20261121";
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python_tool(name: &str) -> PathBuf {
    let env = std::env::var_os("TIERCACHE_PYENV").map_or_else(|| project().join("target/pyenv"), PathBuf::from);
    let tool = env.join("bin").join(name);
    assert!(tool.exists(), "{} is missing: run ./scripts/test.sh, which creates the virtualenv", tool.display());
    tool
}

#[test]
fn the_openapi_file_is_valid_openapi_3_1() {
    let output = std::process::Command::new(python_tool("openapi-spec-validator"))
        .arg(project().join("openapi.yaml"))
        .output()
        .expect("openapi-spec-validator runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(project().join("openapi.yaml").exists());
    let head = std::fs::read_to_string(project().join("openapi.yaml")).unwrap();
    assert!(head.starts_with("openapi: 3.1."), "OpenAPI 3.1");
}

/// `(METHOD, path)` of every operation: from the router's `.route(route::NAME, ...)` calls
/// (each NAME's path read from `src/http/route.rs`), and from the `paths` of `openapi.yaml`
/// (the wildcard `{*key}` is `{key}` there).
#[test]
fn every_route_is_described_and_nothing_else_is() {
    let router = std::fs::read_to_string(project().join("src/http/mod.rs")).unwrap();
    let routes = std::fs::read_to_string(project().join("src/http/route.rs")).unwrap();
    let path_of = |name: &str| {
        let definition = format!("pub const {name}: &str = \"");
        let line = routes.lines().find_map(|line| line.strip_prefix(&definition)).expect("the route is defined");
        line.split('"').next().unwrap().to_string()
    };
    let mut served = BTreeSet::new();
    for line in router.lines().map(str::trim).filter(|line| line.starts_with(".route(route::")) {
        let name = line.trim_start_matches(".route(route::").split(',').next().unwrap();
        let path = path_of(name).replace("{*key}", "{key}");
        if path == "/api/cache/" {
            continue; // The empty key: answers 400 for every method; not an operation.
        }
        for method in ["get", "put", "post", "delete"] {
            if line.contains(&format!("{method}(routes::")) || line.contains(&format!(".{method}(routes::")) {
                served.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let described = described_operations();
    assert_eq!(served.len(), 17, "the router scan found every route: {served:?}");
    assert_eq!(described, served);
}

/// `(METHOD, path)` of every operation in `openapi.yaml`.
fn described_operations() -> BTreeSet<(String, String)> {
    let spec = std::fs::read_to_string(project().join("openapi.yaml")).unwrap();
    let mut described = BTreeSet::new();
    let mut current = None;
    for line in spec.lines() {
        if line == "components:" {
            break;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|rest| rest.strip_suffix(':')) {
            current = Some(format!("/{path}"));
        } else if let (Some(path), Some(method)) =
            (&current, line.strip_prefix("    ").and_then(|m| m.strip_suffix(':')))
        {
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&method) {
                described.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    described
}

/// The README shows a curl call for every operation (SPEC §10).
#[test]
fn the_readme_has_a_curl_example_for_every_operation() {
    let readme = std::fs::read_to_string(project().join("README.md")).unwrap();
    let calls: Vec<&str> = readme.lines().filter(|line| line.starts_with("curl ")).collect();
    for (method, path) in described_operations() {
        let (prefix, suffix) = path.split_once("{key}").unwrap_or((&path, ""));
        let found = calls.iter().any(|call| {
            let url = call.split_whitespace().find(|word| word.starts_with("localhost:4000/")).unwrap_or_default();
            let url = url.trim_start_matches("localhost:4000");
            let method_matches =
                if method == "GET" { !call.contains(" -X ") } else { call.contains(&format!("-X {method} ")) };
            let path_matches = if path.contains("{key}") {
                url.len() > prefix.len() + suffix.len()
                    && url.starts_with(prefix)
                    && url.ends_with(suffix)
                    && !described_operations().iter().any(|(_, fixed)| fixed == url)
            } else {
                url == path
            };
            method_matches && path_matches
        });
        assert!(found, "README.md has no curl example of {method} {path}");
    }
}

/// SPEC §21: what a user gets from `openapi-python-client generate` works. The generator skips
/// an operation it cannot parse with a warning and still exits 0, so the test reads its output
/// and counts the generated modules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_openapi_file_has_every_operation_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("tiercache_client");
    let tools = python_tool("openapi-python-client").parent().unwrap().to_path_buf();
    // ruff (pinned beside the generator) formats the generated code; it must be on PATH.
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let generated = tokio::process::Command::new(tools.join("openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(project().join("openapi.yaml"))
        .arg("--output-path")
        .arg(&package)
        .env("PATH", &path)
        .kill_on_drop(true)
        .output();
    let generated = tokio::time::timeout(RUN_LIMIT, generated).await.expect("the generator finishes").unwrap();
    let report = String::from_utf8_lossy(&generated.stdout).to_string() + &String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "{report}");
    let lowercase = report.to_lowercase();
    for complaint in ["warning", "unable to", "will not be generated", "could not", "error", "not in path"] {
        assert!(!lowercase.contains(complaint), "the generator complained ({complaint}):\n{report}");
    }

    let mut modules = BTreeSet::new();
    for tag_dir in std::fs::read_dir(package.join("api")).unwrap() {
        let tag_dir = tag_dir.unwrap().path();
        if tag_dir.is_dir() {
            for module in std::fs::read_dir(&tag_dir).unwrap() {
                let name = module.unwrap().file_name().to_string_lossy().to_string();
                if let Some(stem) = name.strip_suffix(".py").filter(|stem| *stem != "__init__") {
                    modules.insert(stem.to_string());
                }
            }
        }
    }
    let operations = operation_ids().into_iter().map(|id| snake_case(&id)).collect::<BTreeSet<_>>();
    assert_eq!(operations.len(), 17);
    assert_eq!(modules, operations, "one generated module per operation");

    let python = tools.join("python");
    let imports = tokio::process::Command::new(&python)
        .args(["-c", "import importlib, pkgutil, tiercache_client as p\nfor m in pkgutil.walk_packages(p.__path__, 'tiercache_client.'): importlib.import_module(m.name)"])
        .env("PYTHONPATH", dir.path())
        .kill_on_drop(true)
        .output();
    let imports = tokio::time::timeout(RUN_LIMIT, imports).await.expect("the imports finish").unwrap();
    assert!(imports.status.success(), "the generated package imports: {}", String::from_utf8_lossy(&imports.stderr));

    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let app = TestApp::spawn(move |s| {
        s.l2.url = Secret(redis_url);
        s.auth.tokens = vec![Secret(TOKEN.into())];
    })
    .await;
    app.wait_for_l2("up").await;
    let flow = tokio::process::Command::new(&python)
        .arg(project().join("tests/contract/client_flow.py"))
        .args([&app.base, TOKEN])
        .env("PYTHONPATH", dir.path())
        .kill_on_drop(true)
        .output();
    let flow = tokio::time::timeout(RUN_LIMIT, flow).await.expect("the flow finishes").unwrap();
    let report = String::from_utf8_lossy(&flow.stdout).to_string() + &String::from_utf8_lossy(&flow.stderr);
    assert!(flow.status.success() && report.contains("client flow passed"), "{report}");
    app.shutdown().await;
}

/// Every `operationId` of `openapi.yaml`.
fn operation_ids() -> Vec<String> {
    let spec = std::fs::read_to_string(project().join("openapi.yaml")).unwrap();
    spec.lines().filter_map(|line| line.trim().strip_prefix("operationId: ")).map(str::to_string).collect()
}

/// `getEntry` → `get_entry`, as the generator names modules.
fn snake_case(camel: &str) -> String {
    let mut snake = String::new();
    for character in camel.chars() {
        if character.is_ascii_uppercase() {
            snake.push('_');
        }
        snake.push(character.to_ascii_lowercase());
    }
    snake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_a_live_instance() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    origin.set(
        "warm-source",
        Reply::body(r#"[{"key":"warm:1","value":1,"tags":["warm"]},{"key":"warm:2","value":{"n":2}}]"#),
    );
    let origin_url = origin.url();
    let warm_url = origin.item_url("warm-source");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("contract.snapshot").display().to_string();
    let redis_url = redis.url();
    // Not `spawn_with_redis`: its readiness probe reads the metrics without a token.
    let app = TestApp::spawn(move |s| {
        s.l2.url = Secret(redis_url);
        s.origin.url = origin_url;
        s.warm.url = warm_url;
        s.persistence.path = snapshot;
        s.cache.grace_secs = 5;
        s.auth.tokens = vec![Secret(TOKEN.into())];
        s.auth.read_tokens = vec![Secret("contract-read-token".into())];
    })
    .await;
    app.wait_for_l2("up").await;

    run_schemathesis(&app.base, TOKEN, MAX_EXAMPLES, dir.path()).await;
    app.shutdown().await;
}

/// The other side of every route: an L1-only instance with nothing configured (404 misses,
/// 409 for prefetch, warm and snapshot) asked with a read token (403 for every write, and
/// `/metrics` behind `metrics.require_auth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_a_bare_instance_with_a_read_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(|s| {
        s.auth.tokens = vec![Secret(TOKEN.into())];
        s.auth.read_tokens = vec![Secret("contract-read-token".into())];
        s.metrics.require_auth = true;
    })
    .await;
    run_schemathesis(&app.base, "contract-read-token", "20", dir.path()).await;
    app.shutdown().await;
}

/// Runs every operation against `base` with the four checks of the issue; fails the test
/// with schemathesis's report when it finds anything.
async fn run_schemathesis(base: &str, token: &str, max_examples: &str, work_dir: &Path) {
    let seed = std::env::var("TIERCACHE_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let child = tokio::process::Command::new(python_tool("schemathesis"))
        .args(["--no-color", "run", "--url", base, "--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing,stateful", "--max-examples", max_examples, "--seed", &seed])
        .args(["--request-timeout", "10", "--output-truncate", "false"])
        .arg(project().join("openapi.yaml"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", project().join("tests/contract"))
        // Hypothesis keeps its example database in the working directory.
        .current_dir(work_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("schemathesis starts");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("schemathesis finishes within its limit")
        .expect("schemathesis output");
    let report = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "schemathesis found failures (seed {seed}):\n{report}");
    assert!(report.contains("Tested: 17"), "every operation was tested:\n{report}");
}
