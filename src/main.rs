//! The `tiercache` binary: arguments, settings, logging, `App::start`, wait for a signal,
//! `App::shutdown`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tiercache::config::{LogConfig, LogFormat, Parts};
use tiercache::{App, Settings};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "A standalone HTTP cache service")]
struct Args {
    /// TOML settings file (default: config/default.toml when it exists).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Asks the service on this host (the port of server.listen) for /health: exit 0 when it
    /// answers 200 within 2 s, else 1. For container HEALTHCHECKs, which have no curl.
    Healthcheck,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let parts = match Settings::load(args.config.as_deref(), std::env::vars()).and_then(|settings| settings.parts()) {
        Ok(parts) => parts,
        Err(err) => {
            eprintln!("tiercache: config error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Healthcheck) = args.command {
        return healthcheck(parts.server.listen.port());
    }
    init_logging(&parts.log);
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(parts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("tiercache: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(parts: Parts) -> anyhow::Result<()> {
    let app = App::start(parts).await?;
    wait_for_signal().await;
    // A second signal while draining exits at once.
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("tiercache: second signal, exiting without draining");
        std::process::exit(130);
    });
    app.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}

/// Installs the log filter and format; `parts` checked that the filter parses.
fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `GET /health` on loopback with a plain socket: no runtime, no client library.
/// Raises the soft limit on open files to the hard limit: every connection is a descriptor, and
/// the usual default soft limit (1024) is far below the connections a cache server meets.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open file limit"),
    }
}

fn healthcheck(port: u16) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let answer = (|| -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.take(4096).read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("tiercache: unhealthy: {}", response.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("tiercache: unhealthy: {err}");
            ExitCode::FAILURE
        }
    }
}
