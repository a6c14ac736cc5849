//! The real `tiercache` binary as a child process: for signals, exit codes and config.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{client, eventually, free_port, DEADLINE};

/// The real `tiercache` binary as a child process, killed on drop.
pub struct ServiceProcess {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
}

impl ServiceProcess {
    /// Starts the binary with `env` on a free port and waits for `/health`.
    pub async fn start(env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start_on(free_port(), env, None).await
    }

    /// Starts the binary on `port` (a restart reuses its port), its log appended to `log`.
    pub async fn start_on(port: u16, env: &[(&str, &str)], log: Option<&std::path::Path>) -> ServiceProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tiercache"));
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log");
                (Stdio::from(file.try_clone().expect("clone the log handle")), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command
            .env_clear()
            .env("TIERCACHE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("the binary starts");
        let process = ServiceProcess { child: Some(child), port, base: format!("http://127.0.0.1:{port}") };
        let health = format!("{}/health", process.base);
        let client = client();
        eventually("the service answers /health", || {
            let request = client.get(&health).send();
            async move { request.await.is_ok_and(|response| response.status() == 200) }
        })
        .await;
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill runs");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < DEADLINE, "the process did not exit within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary to completion with `args` and `env` (for start-up failures); bounded.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    run_binary_for(args, env, None)
}

/// Runs the binary for at most `run_for` (then stops it with SIGTERM), or to completion within
/// [`DEADLINE`] when `run_for` is `None`; returns its exit status and stderr.
pub fn run_binary_for(args: &[&str], env: &[(&str, &str)], run_for: Option<Duration>) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tiercache"));
    command
        .env_clear()
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if run_for.is_some_and(|run_for| started.elapsed() > run_for) {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            break child.wait().expect("wait");
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary did not exit within {DEADLINE:?} for args {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr).expect("stderr");
    (status, stderr)
}
