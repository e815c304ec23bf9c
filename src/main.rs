//! `kvs`: parse flags → Config → telemetry → daemon::run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use kvs::cli::{
    CertsArgs, Cli, ClientArgs, ClusterCommand, Command, KvCommand, ServeArgs, TodoCommand,
    TokenCommand,
};
use kvs::client::{self, Request, Target};
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
        Some(Command::Certs(args)) => certs(&args),
        Some(Command::Token(command)) => token(command),
        Some(Command::Todo { client, command }) => {
            let request = match command {
                TodoCommand::Add { text, extern_id, expires_in } => {
                    Request::TodoAdd { text, extern_id, expires_in }
                }
                TodoCommand::Ls { completed, limit } => Request::TodoList { completed, limit },
                TodoCommand::Get { id } => Request::TodoGet { id },
                TodoCommand::Watch { after } => Request::Watch { prefix: None, after },
                TodoCommand::Done { id, undo } => Request::TodoDone { id, done: !undo },
                TodoCommand::Edit { id, text } => Request::TodoEdit { id, text },
                TodoCommand::Expire { id, expires_in, never: _ } => {
                    Request::TodoExpire { id, expires_in }
                }
                TodoCommand::Rm { id } => Request::TodoRemove { id },
            };
            call(&client, request)
        }
        Some(Command::Kv { client, command }) => {
            let request = match command {
                KvCommand::Get { key } => Request::KvGet { key },
                KvCommand::Put { key, value, ttl } => match read_value(value) {
                    Ok(json) => Request::KvPut { key, json, ttl },
                    Err(error) => {
                        eprintln!("kvs: cannot read the value from stdin: {error}");
                        return ExitCode::from(2);
                    }
                },
                KvCommand::Rm { key } => Request::KvRemove { key },
                KvCommand::Ls { prefix, limit } => Request::KvList { prefix, limit },
                KvCommand::Watch { prefix, after } => {
                    Request::Watch { prefix: Some(prefix.unwrap_or_default()), after }
                }
            };
            call(&client, request)
        }
        Some(Command::Backup { client, out }) => backup(&client, &out),
        Some(Command::Restore { file, data_dir }) => restore(&file, &data_dir),
        Some(Command::Cluster { client, command }) => {
            let request = match command {
                ClusterCommand::Status => Request::ClusterStatus,
                ClusterCommand::Members => Request::ClusterMembers,
                ClusterCommand::Overview => Request::ClusterOverview,
                ClusterCommand::Sync { peer } => Request::ClusterSync { peer },
            };
            call(&client, request)
        }
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

/// Runs one client command: its output on stdout, a refusal as one line on stderr.
fn call(args: &ClientArgs, request: Request) -> ExitCode {
    let target = target(args);
    print_outcome(async { client::run(&target, request).await })
}

fn backup(args: &ClientArgs, out: &std::path::Path) -> ExitCode {
    let target = target(args);
    print_outcome(async { client::backup(&target, out).await })
}

/// Runs a client future on a one-thread runtime; prints what it returns (or its error
/// as one line) and gives the exit code.
fn print_outcome(
    command: impl std::future::Future<Output = Result<String, client::ClientError>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvs: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            if let client::ClientError::Partly { output, .. } = &error {
                println!("{output}");
            }
            eprintln!("kvs: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn target(args: &ClientArgs) -> Target {
    Target {
        url: args.url.clone(),
        token: args.token.clone(),
        cacert: args.cacert.clone(),
        json: args.json,
    }
}

fn restore(file: &std::path::Path, data_dir: &std::path::Path) -> ExitCode {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    match kvs::backup::restore(file, data_dir, now) {
        Ok(restored) => {
            println!(
                "restored {} records (Merkle root {}) into {} as node {}",
                restored.trailer.records,
                restored.trailer.merkle_root,
                data_dir.display(),
                restored.node_id
            );
            eprintln!(
                "backup taken {} ms since the epoch on node {}; start a node with --data-dir {} and the cluster's seeds",
                restored.header.created_at_ms,
                restored.header.node_id,
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kvs restore: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A document given on the command line, or read from stdin for `-`.
fn read_value(value: String) -> std::io::Result<String> {
    if value != "-" {
        return Ok(value);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
    Ok(text)
}

fn certs(args: &CertsArgs) -> ExitCode {
    match kvs::keys::write_certs(&args.out, &args.names, &args.sans) {
        Ok(written) => {
            println!("CA certificate     {}", written.ca.display());
            for (name, cert, key) in &written.nodes {
                println!("{name:<18} {}  {}", cert.display(), key.display());
            }
            eprintln!();
            eprintln!("Give node NAME: tls.cert NAME.pem, tls.key NAME-key.pem, tls.ca ca.pem");
            eprintln!("(and tls.peer_auth: mtls to require them between peers). Keep ca-key.pem");
            eprintln!("off the nodes; clients trust ca.pem (curl --cacert ca.pem).");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kvs certs: {error}");
            ExitCode::FAILURE
        }
    }
}

fn token(command: TokenCommand) -> ExitCode {
    let outcome = match command {
        TokenCommand::Keypair { private, public } => token_keypair(&private, &public),
        TokenCommand::Issue { key, subject, allow, ttl } => {
            token_issue(&key, &subject, &allow, &ttl)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("kvs token: {message}");
            ExitCode::from(code)
        }
    }
}

fn token_keypair(private: &std::path::Path, public: &std::path::Path) -> Result<(), (u8, String)> {
    let (private_pem, public_pem) = kvs::keys::token_keypair().map_err(|e| (1, e.to_string()))?;
    kvs::keys::write_new(private, &private_pem, true).map_err(|e| (1, e.to_string()))?;
    kvs::keys::write_new(public, &public_pem, false).map_err(|e| (1, e.to_string()))?;
    println!("private key  {}  (keep it off the nodes; it signs tokens)", private.display());
    println!("public key   {}  (auth.public_key on every node)", public.display());
    Ok(())
}

fn token_issue(
    key: &std::path::Path,
    subject: &str,
    allow: &[String],
    ttl: &str,
) -> Result<(), (u8, String)> {
    let ttl = humantime::parse_duration(ttl).map_err(|error| {
        (2, format!("--ttl {ttl:?} is not a duration like 1h or 30d ({error})"))
    })?;
    if subject.trim().is_empty() {
        return Err((2, "--subject must not be empty".into()));
    }
    let allow = allow
        .iter()
        .map(|text| text.parse::<kvs::token::Permission>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| (2, message))?;
    let pem = std::fs::read(key)
        .map_err(|error| (1, format!("cannot read {}: {error}", key.display())))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (token, id) = kvs::token::issue(&pem, subject, &allow, ttl, now)
        .map_err(|error| (1, format!("{}: {error}", key.display())))?;
    println!("{token}");
    eprintln!();
    eprintln!("token id {id} for {subject}, valid {}", humantime::format_duration(ttl));
    eprintln!("use it:     curl -H \"Authorization: Bearer $TOKEN\" ...");
    eprintln!("revoke it:  POST /admin/v1/revoke {{\"token_id\": \"{id}\"}} (needs admin:*)");
    Ok(())
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
    disable_transparent_huge_pages();
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

/// Turns transparent huge pages off for this process, as Redis and MongoDB advise for
/// theirs. mimalloc asks for huge pages on its arenas, returns freed memory to the
/// kernel after 10 ms, and each later allocation there faults in and zeroes a whole
/// 2 MiB page: with 50 nodes on two cores, that zeroing was 23 % of the CPU (perf) and
/// put a write's visibility on all nodes at p99 0.9–1.6 s instead of 51 ms.
fn disable_transparent_huge_pages() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(%error, "cannot turn transparent huge pages off");
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
