//! `kvs`: parse flags → Config → telemetry → daemon::run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use kvs::cli::{Cli, Command, ServeArgs};
use kvs::config::{self, Config};
use kvs::{daemon, telemetry};

/// mimalloc instead of glibc malloc: sled copies tree nodes on every write, and glibc's
/// allocator was ~10 % of the daemon's CPU under a write load (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Keygen) => {
            keygen();
            ExitCode::SUCCESS
        }
        Some(Command::Serve(args)) => serve(&args),
        None => serve(&cli.serve),
    }
}

fn keygen() {
    let key = config::generate_key();
    println!("{key}");
    eprintln!();
    eprintln!("Give every node of the cluster this same key in a file only kvs can read:");
    eprintln!("  kvs keygen > kvs.key && chmod 600 kvs.key");
    eprintln!("  kvs --cluster-key-file kvs.key ...   (or cluster.key_file in the config)");
    eprintln!("Keep it secret: anyone holding it can join the cluster and read its data.");
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kvs: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = telemetry::init(&config.log_level, config.log_format) {
        eprintln!("kvs: configuration error: {error}");
        return ExitCode::from(2);
    }
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvs: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(daemon::run(config, shutdown_signal()));
    // A blocking task stuck on a failing disk must not hold the exit (shutdown has
    // already waited for what it could).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "kvs stopped");
            eprintln!("kvs: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one: every client connection holds
/// a descriptor, and the usual soft limit (1024) is far below `http.max_connections`.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops kvs");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
