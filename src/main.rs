//! The `tiercache` binary: arguments, settings, logging, `App::start`, wait for a signal,
//! `App::shutdown`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tiercache::{App, Settings};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "A standalone HTTP cache service")]
struct Args {
    /// TOML settings file (default: config/default.toml when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("tiercache: config error: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("tiercache: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = App::start(settings).await?;
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

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_new(&settings.log.level).expect("log.level was validated");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
