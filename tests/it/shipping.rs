//! The shipping files (SPEC §10), checked statically: there is no Docker engine here, so the
//! compose file is validated by `docker-compose config` and the Dockerfile by what it must say.

use std::process::Command;

fn project_file(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).expect("the file exists")
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_health_checked() {
    let dockerfile = project_file("Dockerfile");
    let stages = dockerfile.lines().filter(|line| line.starts_with("FROM ")).count();
    assert_eq!(stages, 2, "a build stage and a runtime stage");
    assert!(dockerfile.contains("cargo build --release --locked"), "builds what Cargo.lock pins");
    let user = dockerfile.lines().find_map(|line| line.strip_prefix("USER ")).expect("a USER line");
    assert!(!["root", "0"].contains(&user.trim()), "runs as a non-root user");
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));
    assert!(dockerfile.contains("EXPOSE 4000"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"healthcheck\""));
    let ignore = project_file(".dockerignore");
    assert!(ignore.lines().any(|line| line == "target"), "the build context leaves target/ out");
}

#[test]
fn the_compose_file_is_valid_and_scrapes_both_instances() {
    let compose = project_file("docker-compose.yml");
    for needle in
        ["tiercache-1", "tiercache-2", "redis", "prometheus", "./deploy/prometheus.yml", "/data/tiercache.snapshot"]
    {
        assert!(compose.contains(needle), "{needle}");
    }
    let prometheus = project_file("deploy/prometheus.yml");
    assert!(prometheus.contains("tiercache-1:4000") && prometheus.contains("tiercache-2:4000"));
    let output = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("docker-compose is installed by scripts/test.sh");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_readme_config_table_matches_default_toml() {
    fn render(value: &toml::Value) -> String {
        match value {
            toml::Value::String(text) => serde_json::to_string(text).unwrap(),
            toml::Value::Array(items) => format!("[{}]", items.iter().map(render).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }
    let defaults: toml::Table = project_file("config/default.toml").parse().expect("default.toml parses");
    let mut expected: Vec<(String, String)> = defaults
        .iter()
        .flat_map(|(section, table)| {
            table
                .as_table()
                .expect("sections are tables")
                .iter()
                .map(move |(key, value)| (format!("{section}.{key}"), render(value)))
        })
        .collect();
    let readme = project_file("README.md");
    let mut listed: Vec<(String, String)> = readme
        .lines()
        .skip_while(|line| !line.starts_with("| key | default |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            (cells[0].trim_start_matches("| ").trim_matches('`').to_string(), cells[1].trim_matches('`').to_string())
        })
        .collect();
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected, "README's configuration table and config/default.toml drifted apart");
}

#[test]
fn the_native_cluster_script_passes_its_smoke_test() {
    // Ports outside the ephemeral range the other tests draw from.
    let port_base = 20_000 + (std::process::id() % 2_000) * 4;
    let mut child = Command::new("bash")
        .args(["scripts/cluster.sh", "--smoke"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BIN", env!("CARGO_BIN_EXE_tiercache"))
        .env("PORT_BASE", port_base.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash runs");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(90) {
            // SIGTERM, so the script's trap stops what it started.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!("scripts/cluster.sh --smoke did not finish in 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(status.success() && stdout.contains("smoke ok"), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
}
