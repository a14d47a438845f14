//! `polybridge`: the bridge daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use polybridge_bridge::admin::{self, AdminState};
use polybridge_bridge::config::{self, parse_duration};
use polybridge_bridge::{connect_brokers, Bridge};

/// Routes messages between brokers by declarative YAML rules, at least once.
#[derive(Parser)]
#[command(name = "polybridge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the routes of a rule file until SIGTERM or Ctrl-C.
    Run {
        /// The rule file.
        #[arg(short, long)]
        config: PathBuf,
        /// How long to let in-progress messages finish on shutdown before nacking them.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        drain_timeout: Duration,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Checks rule files without connecting to anything; prints `file:line:col: reason` for
    /// every problem and exits with 2 if there is one.
    Validate {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Run {
            config,
            drain_timeout,
            log_format,
        } => {
            init_logs(log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("polybridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config, drain_timeout)) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("polybridge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match config::load_file(file) {
            Ok(c) => println!(
                "{}: ok ({} brokers, {} routes)",
                file.display(),
                c.brokers.len(),
                c.routes.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(path: PathBuf, drain: Duration) -> anyhow::Result<ExitCode> {
    let config = match config::load_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let admin_config = config.admin.clone();
    let brokers = connect_brokers(&config).await?;
    for (name, b) in &brokers {
        tracing::info!(broker = %name, url = %b.url(), "connected");
    }
    let bridge = Bridge::start(config, &brokers, drain)?;
    if admin_config.enabled {
        let listener = tokio::net::TcpListener::bind(&admin_config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the admin server",
                    admin_config.listen
                )
            })?;
        tracing::info!(listen = %admin_config.listen, "admin server: /metrics /health /ready /api/routes");
        let state = Arc::new(AdminState {
            routes: bridge.routes.clone(),
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, admin::router(state)).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
    }
    wait_for_shutdown().await?;
    tracing::info!(?drain, "shutting down: draining in-flight messages");
    bridge.stop().await;
    for (name, b) in &brokers {
        if let Err(e) = b.close(polybridge::Deadline::after(drain)).await {
            tracing::warn!(broker = %name, error = %e, "closing the publisher");
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
    }
    Ok(())
}
