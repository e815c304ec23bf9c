//! The validated configuration: defaults < YAML file < environment < flags.
//!
//! The YAML file is parsed with unknown keys refused; every value is checked here, and
//! an error names the key, so a typo stops start-up instead of being ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::auth::Secret;
use crate::cli::{LogFormat, ServeArgs};
use crate::tls::{PeerTls, TlsFiles};
use crate::token::Permission;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./kvs-data";
pub const DEFAULT_RESERVE_BYTES: u64 = 32 * 1024 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Peers a write is pushed to at most: with each receiver passing on what is new to
/// it, a write misses a given node with probability about e^-8 (0.03 %), and anti-entropy
/// repairs that.
pub const DEFAULT_PUSH_FANOUT: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_name: Option<String>,
    pub listen: SocketAddr,
    /// Where peers reach this node; `None` means the address actually bound.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Bytes of the reserve file given back when the disk fills (0 for none).
    pub reserve_bytes: u64,
    pub seeds: Vec<String>,
    /// The 32-byte cluster key, when one is configured.
    pub cluster_key: Option<Secret>,
    /// Run without a key beyond loopback (`cluster.insecure`): peer routes open to all.
    pub insecure: bool,
    /// Things to warn about at start (a key on the command line, a key file others can
    /// read); never the secret itself.
    pub warnings: Vec<String>,
    pub sync_interval: Duration,
    pub gossip_interval: Duration,
    pub join_timeout: Duration,
    pub tombstone_ttl: Duration,
    pub max_clock_skew: Duration,
    /// Push every local write to the alive peers at once (anti-entropy alone if off).
    pub push_on_write: bool,
    /// Peers each write is pushed to at most (see `sync::push`).
    pub push_fanout: usize,
    /// Answer reads (GET/HEAD on data routes) while not ready, from possibly stale data.
    pub serve_stale: bool,
    pub max_body_bytes: usize,
    /// Open connections at most; past it new ones wait in the backlog.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers (or stay idle).
    pub header_read_timeout: Duration,
    /// False only for the `merkle-cost` benchmark (`--bench-skip-merkle`, standalone).
    pub merkle_upkeep: bool,
    /// TLS on the one port; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Client tokens; `None` lets every client do everything.
    pub auth: Option<AuthConfig>,
    /// The change log watchers resume from: at most this many changes (`watch.log_entries`)…
    pub watch_log_entries: u64,
    /// …none older than this (`watch.log_age`).
    pub watch_log_age: Duration,
    /// Per-client rate limit; `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    pub log_level: String,
    pub log_format: LogFormat,
}

/// `auth`: how client tokens are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The PEM public key tokens are verified with (public: not a secret).
    pub public_key_pem: Vec<u8>,
    /// What a request without a token may do (`/health/live` and `/health/ready` are
    /// always open).
    pub anonymous: Vec<Permission>,
}

/// `limits`: requests per second per client, with a burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// The YAML file's shape. Every section refuses unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    cluster: ClusterSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    watch: WatchSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchSection {
    log_entries: Option<u64>,
    log_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    peer_auth: Option<PeerTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    public_key: Option<PathBuf>,
    anonymous: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    requests_per_second: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    name: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    reserve_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    seeds: Option<Vec<String>>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    insecure: Option<bool>,
    sync_interval: Option<String>,
    gossip_interval: Option<String>,
    join_timeout: Option<String>,
    tombstone_ttl: Option<String>,
    max_clock_skew: Option<String>,
    push_on_write: Option<bool>,
    push_fanout: Option<usize>,
    serve_stale: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout: Option<String>,
}

impl Config {
    /// Resolves flags (which clap already merged with the environment) over the file
    /// named by `--config`, over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_layers(args, file)
    }

    /// Parses YAML text as a config file (with no flags over it).
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let file = parse_file(Path::new("<inline>"), text)?;
        Self::from_layers(&ServeArgs::default(), file)
    }

    fn from_layers(args: &ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let FileConfig { log_level, log_format, node, cluster, http, tls, auth, limits, watch } =
            file;
        let watch_log_entries = args.watch_log_entries.or(watch.log_entries).unwrap_or(100_000);
        if watch_log_entries == 0 {
            return Err(invalid("watch.log_entries", "must be greater than 0"));
        }
        let push_fanout = args.push_fanout.or(cluster.push_fanout).unwrap_or(DEFAULT_PUSH_FANOUT);
        if push_fanout == 0 {
            return Err(invalid(
                "cluster.push_fanout",
                "must be at least 1 (to stop pushing, set cluster.push_on_write: false)",
            ));
        }
        let tls = resolve_tls(args, tls)?;
        let auth = resolve_auth(args, auth)?;
        let rate_limit = resolve_limits(args, limits)?;
        let listen_text = args.listen.clone().or(node.listen).unwrap_or(DEFAULT_LISTEN.into());
        let mut listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid("node.listen", format!("{listen_text:?} is not an IP address with a port"))
        })?;
        if let Some(port) = args.port.or(node.port) {
            listen.set_port(port);
        }
        let advertise = args.advertise.clone().or(node.advertise);
        if let Some(advertise) = &advertise {
            check_host_port("node.advertise", advertise)?;
        }
        let seeds = args.seeds.clone().or(cluster.seeds).unwrap_or_default();
        let seeds: Vec<String> =
            seeds.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        for seed in &seeds {
            check_host_port("cluster.seeds", seed)?;
        }
        if !seeds.is_empty() && advertise.is_none() && listen.ip().is_unspecified() {
            return Err(invalid(
                "node.advertise",
                format!("must be set when listening on {listen}: peers cannot reach that address"),
            ));
        }
        if args.bench_skip_merkle && !seeds.is_empty() {
            return Err(invalid(
                "bench_skip_merkle",
                "a node without a Merkle tree cannot sync: run it without seeds",
            ));
        }
        let node_name = args.node_name.clone().or(node.name);
        if node_name.as_deref().is_some_and(|name| name.trim().is_empty() || name.len() > 128) {
            return Err(invalid("node.name", "must be 1 to 128 bytes"));
        }
        let mut warnings = Vec::new();
        let flag_key = args.cluster_key.clone().filter(|key| !key.trim().is_empty());
        if flag_key.is_some() && std::env::var("KVS_CLUSTER_KEY").ok() != flag_key {
            warnings.push(
                "the cluster key was given with --cluster-key, which every local user can \
                 read in the process list; use --cluster-key-file or KVS_CLUSTER_KEY"
                    .to_owned(),
            );
        }
        let key_text = match (flag_key, args.cluster_key_file.clone().or(cluster.key_file)) {
            (Some(key), _) => Some(key),
            (None, Some(path)) => Some(read_key_file(&path, &mut warnings)?),
            (None, None) => cluster.key.filter(|key| !key.trim().is_empty()),
        };
        let cluster_key = key_text.map(|key| parse_key(key.trim()).map(Secret)).transpose()?;
        let insecure = args.cluster_insecure.or(cluster.insecure).unwrap_or(false);
        if cluster_key.is_none() && !insecure && !seeds.is_empty() && !listen.ip().is_loopback() {
            return Err(invalid(
                "cluster.key",
                format!(
                    "a node listening on {listen} in cluster mode needs a cluster key: without \
                     one anyone who can reach the port can read, write and delete everything. \
                     Make one with `kvs keygen > kvs.key && chmod 600 kvs.key`, copy it to \
                     every node and pass --cluster-key-file kvs.key (or set cluster.key_file, \
                     or KVS_CLUSTER_KEY); or accept the risk with cluster.insecure: true"
                ),
            ));
        }
        let duration =
            |key: &'static str, flag: &Option<String>, file: Option<String>, default| match flag
                .clone()
                .or(file)
            {
                Some(text) => parse_duration(key, &text),
                None => Ok(default),
            };
        let max_body_bytes =
            args.max_body_bytes.or(http.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 || max_body_bytes > crate::wire::MAX_PUBLIC_BODY_BYTES {
            return Err(invalid(
                "http.max_body_bytes",
                format!(
                    "must be between 1 and {} (peers refuse records larger than {} bytes)",
                    crate::wire::MAX_PUBLIC_BODY_BYTES,
                    crate::wire::MAX_RECORD_BYTES
                ),
            ));
        }
        let max_connections = args.max_connections.or(http.max_connections).unwrap_or(4_096);
        if max_connections == 0 {
            return Err(invalid("http.max_connections", "must be greater than 0"));
        }
        Ok(Config {
            node_name,
            listen,
            advertise,
            data_dir: args.data_dir.clone().or(node.data_dir).unwrap_or(DEFAULT_DATA_DIR.into()),
            reserve_bytes: args
                .reserve_bytes
                .or(node.reserve_bytes)
                .unwrap_or(DEFAULT_RESERVE_BYTES),
            seeds,
            cluster_key,
            insecure,
            warnings,
            sync_interval: duration(
                "cluster.sync_interval",
                &args.sync_interval,
                cluster.sync_interval,
                Duration::from_secs(1),
            )?,
            gossip_interval: duration(
                "cluster.gossip_interval",
                &args.gossip_interval,
                cluster.gossip_interval,
                Duration::from_millis(200),
            )?,
            join_timeout: duration(
                "cluster.join_timeout",
                &args.join_timeout,
                cluster.join_timeout,
                Duration::from_secs(10),
            )?,
            tombstone_ttl: duration(
                "cluster.tombstone_ttl",
                &args.tombstone_ttl,
                cluster.tombstone_ttl,
                Duration::from_secs(7 * 24 * 3600),
            )?,
            max_clock_skew: duration(
                "cluster.max_clock_skew",
                &args.max_clock_skew,
                cluster.max_clock_skew,
                Duration::from_secs(1),
            )?,
            push_on_write: args.push_on_write.or(cluster.push_on_write).unwrap_or(true),
            push_fanout,
            serve_stale: args.serve_stale.or(cluster.serve_stale).unwrap_or(false),
            max_body_bytes,
            max_connections,
            header_read_timeout: duration(
                "http.header_read_timeout",
                &args.header_read_timeout,
                http.header_read_timeout,
                Duration::from_secs(20),
            )?,
            merkle_upkeep: !args.bench_skip_merkle,
            watch_log_entries,
            watch_log_age: duration(
                "watch.log_age",
                &args.watch_log_age,
                watch.log_age,
                Duration::from_secs(24 * 3600),
            )?,
            tls,
            auth,
            rate_limit,
            log_level: args.log_level.clone().or(log_level).unwrap_or("info".into()),
            log_format: args.log_format.or(log_format).unwrap_or(LogFormat::Text),
        })
    }
}

fn resolve_tls(args: &ServeArgs, file: TlsSection) -> Result<Option<TlsFiles>, ConfigError> {
    let peer_auth = match &args.tls_peer_auth {
        Some(text) => text.parse().map_err(|message| invalid("tls.peer_auth", message))?,
        None => file.peer_auth.unwrap_or_default(),
    };
    let ca = args.tls_ca.clone().or(file.ca);
    let tls = match (args.tls_cert.clone().or(file.cert), args.tls_key.clone().or(file.key)) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key, ca, peer_auth }),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("tls.key", "tls.cert is set but tls.key is not")),
        (None, Some(_)) => return Err(invalid("tls.cert", "tls.key is set but tls.cert is not")),
    };
    match &tls {
        Some(files) if peer_auth == PeerTls::Mtls && files.ca.is_none() => Err(invalid(
            "tls.peer_auth",
            "mtls needs tls.ca, the CA peer certificates are signed by (`kvs certs` writes one)",
        )),
        None if peer_auth == PeerTls::Mtls => {
            Err(invalid("tls.peer_auth", "mtls needs TLS: set tls.cert and tls.key"))
        }
        _ => Ok(tls),
    }
}

fn resolve_auth(args: &ServeArgs, file: AuthSection) -> Result<Option<AuthConfig>, ConfigError> {
    let anonymous = args.auth_anonymous.clone().or(file.anonymous);
    let Some(path) = args.auth_public_key.clone().or(file.public_key) else {
        if anonymous.is_some() {
            return Err(invalid("auth.anonymous", "needs auth.public_key (tokens are off)"));
        }
        return Ok(None);
    };
    let public_key_pem = std::fs::read(&path).map_err(|error| {
        invalid("auth.public_key", format!("cannot read {}: {error}", path.display()))
    })?;
    crate::token::Verifier::new(&public_key_pem)
        .map_err(|error| invalid("auth.public_key", format!("{}: {error}", path.display())))?;
    let anonymous = anonymous
        .unwrap_or_default()
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|text| {
            text.parse::<Permission>().map_err(|message| invalid("auth.anonymous", message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(AuthConfig { public_key_pem, anonymous }))
}

fn resolve_limits(args: &ServeArgs, file: LimitsSection) -> Result<Option<RateLimit>, ConfigError> {
    let per_second = args.requests_per_second.or(file.requests_per_second).unwrap_or(0);
    let burst = args.burst.or(file.burst);
    if per_second == 0 {
        if burst.is_some() {
            return Err(invalid("limits.burst", "needs limits.requests_per_second"));
        }
        return Ok(None);
    }
    let burst = burst.unwrap_or(per_second);
    if burst == 0 {
        return Err(invalid("limits.burst", "must be greater than 0"));
    }
    Ok(Some(RateLimit { per_second, burst }))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    yaml_serde::from_str(text)
        .map_err(|error| ConfigError::Parse { path: path.to_owned(), message: error.to_string() })
}

fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        invalid(key, format!("{text:?} is not a duration like 500ms, 1s or 7d ({error})"))
    })?;
    if duration.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(duration)
}

fn check_host_port(key: &'static str, text: &str) -> Result<(), ConfigError> {
    let valid = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Ok(())
    } else {
        Err(invalid(key, format!("{text:?} is not host:port")))
    }
}

/// Reads a key file; warns (in `warnings`) when other users may read it.
fn read_key_file(path: &Path, warnings: &mut Vec<String>) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        invalid("cluster.key_file", format!("cannot read {}: {error}", path.display()))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "the key file {} can be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    Ok(text)
}

fn parse_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| invalid("cluster.key", "is not base64; make one with `kvs keygen`"))?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        invalid(
            "cluster.key",
            format!("must be 32 bytes, got {}; make one with `kvs keygen`", bytes.len()),
        )
    })
}

/// A fresh cluster key, base64.
pub fn generate_key() -> String {
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyless_cluster_beyond_loopback_refuses_to_start_unless_insecure() {
        let refused = Config::from_yaml(
            "node: {listen: '0.0.0.0:7000', advertise: 'h:7000'}\ncluster: {seeds: ['a:1']}",
        );
        let message = refused.unwrap_err().to_string();
        assert!(
            message.contains("kvs keygen") && message.contains("cluster.insecure"),
            "{message}"
        );
        for fine in [
            "node: {listen: '0.0.0.0:7000', advertise: 'h:7000'}\ncluster: {seeds: ['a:1'], insecure: true}",
            "node: {listen: '127.0.0.1:7000'}\ncluster: {seeds: ['a:1']}",
            "node: {listen: '0.0.0.0:7000'}",
        ] {
            assert!(Config::from_yaml(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_key_file_is_read_and_a_readable_one_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvs.key");
        std::fs::write(&path, format!("{}\n", generate_key())).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let yaml = format!(
            "node: {{listen: '0.0.0.0:7000', advertise: 'h:7000'}}\ncluster: {{seeds: ['a:1'], key_file: '{}'}}",
            path.display()
        );
        let config = Config::from_yaml(&yaml).unwrap();
        assert!(config.cluster_key.is_some());
        assert!(!format!("{config:?}")
            .contains(&format!("{:?}", config.cluster_key.as_ref().unwrap().0)));
        #[cfg(unix)]
        assert!(config.warnings.iter().any(|w| w.contains("chmod 600")), "{:?}", config.warnings);
        let missing = Config::from_yaml("cluster: {key_file: '/nonexistent/kvs.key'}");
        assert!(missing.unwrap_err().to_string().contains("cannot read /nonexistent/kvs.key"));
    }

    #[test]
    fn defaults() {
        let config = Config::from_yaml("").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.advertise, None);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.sync_interval, Duration::from_secs(1));
        assert_eq!(config.tombstone_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.cluster_key, None);
        assert_eq!(config.push_fanout, DEFAULT_PUSH_FANOUT);
    }

    #[test]
    fn the_documented_example_parses() {
        let config = Config::from_yaml(include_str!("../configs/node1.yaml")).unwrap();
        assert_eq!(config.node_name.as_deref(), Some("node-1"));
        assert_eq!(config.seeds.len(), 3);
        assert_eq!(config.gossip_interval, Duration::from_millis(200));
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = Config::from_yaml("node:\n  nmae: x\n").unwrap_err().to_string();
        assert!(error.contains("nmae"), "{error}");
        let error = Config::from_yaml("colour: red\n").unwrap_err().to_string();
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        for (yaml, key) in [
            ("cluster:\n  sync_interval: soon\n", "cluster.sync_interval"),
            ("cluster:\n  key: abc\n", "cluster.key"),
            ("node:\n  listen: nowhere\n", "node.listen"),
            ("cluster:\n  seeds: [\"no-port\"]\n", "cluster.seeds"),
            ("cluster:\n  join_timeout: 0s\n", "cluster.join_timeout"),
            ("cluster:\n  push_fanout: 0\n", "cluster.push_fanout"),
            ("http:\n  max_body_bytes: 0\n", "http.max_body_bytes"),
            ("http:\n  max_body_bytes: 16777216\n", "http.max_body_bytes"),
            ("node:\n  listen: 0.0.0.0:80\ncluster:\n  seeds: [\"a:1\"]\n", "node.advertise"),
        ] {
            let error = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(error.starts_with(key), "{yaml:?} gave {error}");
        }
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "node:\n  listen: 127.0.0.1:9000\n  name: from-file\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            port: Some(9100),
            node_name: Some("from-flag".into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.node_name.as_deref(), Some("from-flag"));
    }

    #[test]
    fn serve_stale_comes_from_the_file_or_a_flag() {
        assert!(!Config::from_yaml("").unwrap().serve_stale);
        assert!(Config::from_yaml("cluster:\n  serve_stale: true\n").unwrap().serve_stale);
        let error = Config::from_yaml("cluster:\n  serve_stale: sometimes\n").unwrap_err();
        assert!(error.to_string().contains("serve_stale"), "{error}");
    }

    #[test]
    fn skipping_the_merkle_tree_refuses_seeds() {
        let args = ServeArgs { bench_skip_merkle: true, ..ServeArgs::default() };
        assert!(!Config::resolve(&args).unwrap().merkle_upkeep);
        let args = ServeArgs { seeds: Some(vec!["127.0.0.1:1".into()]), ..args };
        let error = Config::resolve(&args).unwrap_err().to_string();
        assert!(error.starts_with("bench_skip_merkle"), "{error}");
    }

    #[test]
    fn generated_keys_are_accepted() {
        let key = generate_key();
        assert_eq!(parse_key(&key).unwrap().len(), 32);
        assert_ne!(generate_key(), key);
    }
}
