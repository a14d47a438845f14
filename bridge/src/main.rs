//! `polybridge`: the bridge daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use polybridge_bridge::admin::{self, AdminState};
use polybridge_bridge::config::{self, parse_duration};
use polybridge_bridge::{ruletest, Bridge};

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
        /// How often to check the rule file for changes (a change reloads it, like SIGHUP);
        /// `0s` turns watching off.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        watch_interval: Duration,
    },
    /// Runs the rule tests of a test file on in-memory brokers: given input messages,
    /// asserts what the routes send where. Exits with 1 if a case fails.
    Test {
        /// Test files (format: docs/rules.md, "Rule tests").
        #[arg(required = true)]
        files: Vec<PathBuf>,
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

/// With the `jemalloc` feature, jemalloc instead of glibc's allocator: the bridge's CPU per
/// message is 18–25 % lower at 256 B, its idle RSS 1–2 MiB higher, or the same with the
/// container image's build settings (Dockerfile; docs/benchmarks/README.md, "The allocator:
/// jemalloc, opt-in" and "The container image: jemalloc in the same memory").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Test { files } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("polybridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut code = 0u8;
            for f in &files {
                code = code.max(runtime.block_on(ruletest::run_file(f)));
            }
            ExitCode::from(code)
        }
        Command::Run {
            config,
            drain_timeout,
            log_format,
            watch_interval,
        } => {
            init_logs(log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("polybridge: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config, drain_timeout, watch_interval)) {
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
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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

async fn run(path: PathBuf, drain: Duration, watch: Duration) -> anyhow::Result<ExitCode> {
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}:1:1: cannot read the file: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let config = match load_text(&path, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let admin_config = config.admin.clone();
    let mut bridge = Bridge::connect_and_start(config, drain).await?;
    if admin_config.enabled {
        let listener = tokio::net::TcpListener::bind(&admin_config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the admin server",
                    admin_config.listen
                )
            })?;
        tracing::info!(
            listen = %admin_config.listen,
            "admin server: / (status page) /metrics /health /ready /api/routes /api/status"
        );
        let state = Arc::new(AdminState::new(bridge.table(), admin_config.token.clone()));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, admin::router(state)).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut poll = tokio::time::interval(if watch.is_zero() {
        Duration::from_secs(3600)
    } else {
        watch
    });
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(file = %path.display(), "running; SIGHUP or a change of the file reloads it, SIGTERM stops");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { r.context("cannot watch Ctrl-C")?; break }
            _ = hup.recv() => {
                if let Ok(t) = std::fs::read_to_string(&path) {
                    text = t;
                }
                reload(&mut bridge, &path, &text, "SIGHUP", &admin_config.listen).await;
            }
            _ = poll.tick(), if !watch.is_zero() => {
                match std::fs::read_to_string(&path) {
                    Ok(t) if t != text => {
                        text = t;
                        reload(&mut bridge, &path, &text, "file change", &admin_config.listen).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read the rule file to check for changes"),
                }
            }
        }
    }
    tracing::info!(
        ?drain,
        "shutting down: no new deliveries; draining those in progress"
    );
    bridge.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn load_text(path: &std::path::Path, text: &str) -> Result<config::Config, config::ConfigErrors> {
    config::load(text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
}

/// Validates the rule file again and applies it; an invalid file changes nothing.
async fn reload(bridge: &mut Bridge, path: &std::path::Path, text: &str, why: &str, listen: &str) {
    tracing::info!(file = %path.display(), trigger = why, "reloading the rule file");
    let config = match load_text(path, text) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("{line}");
            }
            tracing::error!(
                errors = e.diagnostics.len(),
                "reload refused: the new rule file is invalid; the current routes keep running"
            );
            return;
        }
    };
    if config.admin.listen != listen {
        tracing::warn!(old = listen, new = %config.admin.listen, "the admin listen address changes only on restart");
    }
    match bridge.reload(config).await {
        Ok(s) => tracing::info!(
            started = ?s.started,
            stopped = ?s.stopped,
            unchanged = ?s.unchanged,
            "reloaded"
        ),
        Err(e) => tracing::error!("reload refused: {e:#}; the current routes keep running"),
    }
}
