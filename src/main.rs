//! The `influx-write-proxy` command: arguments, logging, run, exit code.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use influx_write_proxy::Config;
use tracing_subscriber::EnvFilter;

/// Request bodies are large and short-lived; mimalloc reuses their memory instead of
/// returning it to the kernel and faulting it back in on the next request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Routes InfluxDB 1.x line-protocol writes to InfluxDB clusters"
)]
struct Args {
    /// Configuration file [default: $INFLUX_WRITE_PROXY_CONFIG, then ./proxy.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log line format (the level comes from RUST_LOG, default "info")
    #[arg(long, global = true, value_enum, env = "INFLUX_WRITE_PROXY_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate the configuration, print `config OK` or every error
    Check,
    /// Read a password (or with --token, a token) on stdin and print what to put in
    /// proxy.toml: an argon2id PHC string, or `sha256:<hex>`
    HashSecret {
        /// Hash a token (`sha256:<hex>` for [[auth.tokens]] token)
        #[arg(long)]
        token: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = args
        .config
        .or_else(|| std::env::var_os("INFLUX_WRITE_PROXY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"));
    if let Some(Command::HashSecret { token }) = args.command {
        return hash_secret(token);
    }
    if args.command.is_none() {
        purge_freed_memory_sooner();
    }
    let config = Config::load(&path);
    if let Some(Command::Check) = args.command {
        return match config {
            Ok(_) => {
                println!("config OK");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                println!("{errors}");
                ExitCode::FAILURE
            }
        };
    }
    let _log_guard = init_tracing(args.log_format);
    let config = match config {
        Ok(config) => config,
        Err(errors) => {
            for error in errors.0 {
                tracing::error!(%error, "invalid configuration");
            }
            return ExitCode::FAILURE;
        }
    };
    // Client connections are served on the threads of `workers.rs`; this runtime runs the
    // accept loops, health checks, spool replay and the admin listener.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1);
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let bound = influx_write_proxy::Bound::bind(config).await?;
        let reloader = bound.reloader(path.clone());
        bound.serve(signals(reloader)).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}

/// How long mimalloc keeps freed memory before giving it back to the kernel, unless
/// `MIMALLOC_PURGE_DELAY` is set. Its own default (1 s) holds what a burst of new
/// connections frees while new requests take more (README, "Memory", has the figures).
const PURGE_DELAY_MS: &str = "50";

/// mimalloc reads its options once, when the process is loaded, and setting one afterwards
/// takes `unsafe` FFI; so, when the variable is not set, the server starts itself again
/// with it, before it has read its configuration (same PID, same arguments; `check` and
/// `hash-secret` need no restart). If that fails
/// (the binary was replaced on disk, say) it runs on with mimalloc's default.
fn purge_freed_memory_sooner() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env(VAR, PURGE_DELAY_MS).exec();
    eprintln!(
        "cannot restart with {VAR}={PURGE_DELAY_MS} ({error}); running with mimalloc's default"
    );
}

fn hash_secret(token: bool) -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    // A trailing newline (from echo or a terminal) is not part of the secret.
    let secret = input.strip_suffix('\n').unwrap_or(&input);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        eprintln!("nothing to hash: give the secret on stdin");
        return ExitCode::FAILURE;
    }
    if token {
        let digest = influx_write_proxy::config::sha256(secret.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        println!("sha256:{hex}");
    } else {
        println!("{}", influx_write_proxy::auth::hash_password(secret));
    }
    ExitCode::SUCCESS
}

/// Most hand-overs queued for the log writer: a serving thread hands over up to 64 KiB of
/// access lines at once (`log_fields`), any other thread one line, so the queue holds about
/// 16 MiB at most. (tracing-appender's default, 128,000, allowed gigabytes of batches, and
/// its slots alone took 4 MB from the start.)
const LOG_QUEUE: usize = 256;

/// Logs go to stderr from a background thread: a request formats its line and hands it
/// over, and never waits on the terminal or a slow log collector. Lines are kept (not
/// dropped) when the thread falls behind, by making the writer wait once [`LOG_QUEUE`]
/// hand-overs are queued. The returned guard flushes what is queued when it is dropped, at
/// exit.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE)
        .thread_name("log-writer")
        // The thread writes what is queued, then flushes: lines that arrive together (one
        // per request under load) leave in one write instead of one each.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    // Colours only for a person at a terminal, never in journald or a log file.
    let ansi = std::io::stderr().is_terminal();
    if format == LogFormat::Text && !ansi {
        // Access lines are written straight to the same writer (see `log_fields`).
        influx_write_proxy::log_fields::set_direct_sink(writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(influx_write_proxy::log_time::Rfc3339Micros)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder
            .fmt_fields(influx_write_proxy::log_fields::PlainFields)
            .init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Resolves on SIGTERM or SIGINT; reloads the configuration on each SIGHUP.
async fn signals(reloader: influx_write_proxy::server::Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                let reloader = reloader.clone();
                // Reading files (and TLS material) is blocking work.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        }
    }
}
