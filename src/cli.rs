//! Command-line flags, raw (clap only). Every serve flag can also come from a `KVS_…`
//! environment variable; [`crate::config`] layers them over the YAML file and validates.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kvs",
    version,
    about = "A replicated key-value daemon: every node holds all the data and converges with its peers",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, kvs serves (`kvs` is `kvs serve`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default).
    Serve(Box<ServeArgs>),
    /// Print a new random 256-bit cluster key and how to use it.
    Keygen,
    /// Write a local CA and one TLS certificate per node name (for a test cluster).
    Certs(CertsArgs),
    /// Make client tokens: a key pair, then tokens signed with its private key.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Todos on a running node: add, ls, get, done, edit, rm.
    Todo {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TodoCommand,
    },
    /// JSON documents on a running node: get, put, rm, ls.
    Kv {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Save a running node's backup to a file (checked against its Merkle root).
    Backup {
        #[command(flatten)]
        client: ClientArgs,
        /// The file to write (must not exist)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a data directory from a backup file (then start a node on it).
    Restore {
        /// A file from `kvs backup`
        file: PathBuf,
        /// The new node's data directory (must be empty or absent)
        #[arg(long = "data-dir", value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// The cluster as a node sees it: status, members.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

/// How the client commands reach a node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The node's URL
    #[arg(long, env = "KVS_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// A client token (`kvs token issue`)
    #[arg(long, env = "KVS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust instead of the system's (e.g. from `kvs certs`)
    #[arg(long, env = "KVS_CACERT", value_name = "FILE", global = true)]
    pub cacert: Option<PathBuf>,
    /// Print the API's JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TodoCommand {
    /// Create a todo
    Add {
        text: String,
        /// Your own id for it (fixes the todo's id on every node)
        #[arg(long)]
        extern_id: Option<String>,
        /// Delete it on every node this long from now (30s, 15m, 2h, 7d)
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List todos, newest first
    Ls {
        /// Only completed (true) or open (false) todos
        #[arg(long)]
        completed: Option<bool>,
        /// At most this many (1-1000)
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one todo
    Get { id: String },
    /// Follow every change to a todo as it happens (Ctrl-C to stop)
    Watch {
        /// Resume after this change number (an earlier event's id) instead of from now
        #[arg(long)]
        after: Option<u64>,
    },
    /// Mark a todo done (or not, with --undo)
    Done {
        id: String,
        #[arg(long)]
        undo: bool,
    },
    /// Change a todo's text
    Edit { id: String, text: String },
    /// Make a todo expire this long from now (30s, 15m, 2h, 7d), or never again
    Expire {
        id: String,
        #[arg(required_unless_present = "never", value_name = "DURATION")]
        expires_in: Option<String>,
        /// Remove the expiry
        #[arg(long, conflicts_with = "expires_in")]
        never: bool,
    },
    /// Delete a todo
    Rm { id: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KvCommand {
    /// Print a document
    Get { key: String },
    /// Store a JSON document (`-` reads it from stdin)
    Put {
        key: String,
        value: String,
        /// Delete it on every node this long from now (30s, 15m, 2h, 7d); without it,
        /// the document never expires
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Delete a document
    Rm { key: String },
    /// List keys in order
    Ls {
        /// Only keys starting with this
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many (1-1000)
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Follow every change to a document as it happens (Ctrl-C to stop)
    Watch {
        /// Only keys starting with this
        #[arg(long)]
        prefix: Option<String>,
        /// Resume after this change number (an earlier event's id) instead of from now
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// This node: readiness, members alive, counts, Merkle root, storage
    Status,
    /// Every member this node knows, with its state and last sync
    Members,
    /// Every member's own figures (records, Merkle root, writes), asked now (admin:*)
    Overview,
    /// Run an anti-entropy round now with every alive peer, or with one (admin:*)
    Sync {
        /// The advertised address of the one member to sync with
        #[arg(long)]
        peer: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem, ca-key.pem, NAME.pem and NAME-key.pem into
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Comma-separated node names; each certificate is valid for its name, localhost,
    /// 127.0.0.1 and ::1
    #[arg(long, value_name = "N1,N2", value_delimiter = ',', required = true)]
    pub names: Vec<String>,
    /// More names or IP addresses every node certificate is valid for
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Write a new Ed25519 key pair: PRIVATE (keep it off the nodes) and PUBLIC
    /// (`auth.public_key` on every node).
    Keypair {
        /// Private key file to write (mode 600)
        #[arg(long, value_name = "FILE", default_value = "token-private.pem")]
        private: PathBuf,
        /// Public key file to write
        #[arg(long, value_name = "FILE", default_value = "token-public.pem")]
        public: PathBuf,
    },
    /// Print a token signed with the private key.
    Issue {
        /// The private key from `kvs token keypair`
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Who the token is for (the rate limit counts per subject)
        #[arg(long, value_name = "NAME")]
        subject: String,
        /// A permission ACTION:SCOPE, repeatable: ACTION is read, write, delete, admin or
        /// metrics; SCOPE is todos, kv/<prefix> or * (admin and metrics take *)
        #[arg(long = "allow", value_name = "ACTION:SCOPE", required = true)]
        allow: Vec<String>,
        /// How long the token is valid, e.g. 1h, 30d
        #[arg(long, value_name = "DURATION", default_value = "30d")]
        ttl: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags for `kvs serve`. Unset flags fall back to the environment, then the config file,
/// then the defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// YAML configuration file (see configs/)
    #[arg(long, env = "KVS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "KVS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address peers use to reach this node (host:port, may be a DNS name)
    /// [default: the listen address]
    #[arg(long, env = "KVS_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Port to listen on (replaces the port of --listen)
    #[arg(long, env = "KVS_PORT", value_name = "N")]
    pub port: Option<u16>,
    /// Directory of this node's database [default: ./kvs-data]
    #[arg(long = "data-dir", visible_alias = "db", env = "KVS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bytes kept in a reserve file in the data directory and given back when the disk
    /// fills, so the node can reopen its store and serve reads (0 for none)
    /// [default: 33554432]
    #[arg(long, env = "KVS_RESERVE_BYTES", value_name = "BYTES")]
    pub reserve_bytes: Option<u64>,
    /// Human-readable node name [default: node-<first 8 hex digits of the node id>]
    #[arg(long, env = "KVS_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Comma-separated peers to join through (host:port; may include this node)
    #[arg(long, env = "KVS_SEEDS", value_name = "A,B,C", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Shared cluster secret from `kvs keygen` (prefer --cluster-key-file: every local
    /// user can read a command line)
    #[arg(long, env = "KVS_CLUSTER_KEY", value_name = "KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// File holding the cluster key (`kvs keygen > kvs.key && chmod 600 kvs.key`)
    #[arg(long, env = "KVS_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Run a cluster without a key beyond loopback: anyone who can reach the port can
    /// read and write everything [default: false]
    #[arg(long, env = "KVS_CLUSTER_INSECURE", value_name = "BOOL")]
    pub cluster_insecure: Option<bool>,
    /// Anti-entropy interval, e.g. 1s [default: 1s]
    #[arg(long, env = "KVS_SYNC_INTERVAL", value_name = "DURATION")]
    pub sync_interval: Option<String>,
    /// Gossip interval, e.g. 200ms [default: 200ms]
    #[arg(long, env = "KVS_GOSSIP_INTERVAL", value_name = "DURATION")]
    pub gossip_interval: Option<String>,
    /// How long to try the seeds before running standalone [default: 10s]
    #[arg(long, env = "KVS_JOIN_TIMEOUT", value_name = "DURATION")]
    pub join_timeout: Option<String>,
    /// How long tombstones are kept at most [default: 7d]
    #[arg(long, env = "KVS_TOMBSTONE_TTL", value_name = "DURATION")]
    pub tombstone_ttl: Option<String>,
    /// Remote timestamps further ahead than this are logged [default: 1s]
    #[arg(long, env = "KVS_MAX_CLOCK_SKEW", value_name = "DURATION")]
    pub max_clock_skew: Option<String>,
    /// Push each write to the peers at once; false leaves it to anti-entropy [default: true]
    #[arg(long, env = "KVS_PUSH_ON_WRITE", value_name = "BOOL")]
    pub push_on_write: Option<bool>,
    /// Push each write to at most this many peers, chosen at random; in a larger
    /// cluster each peer that receives a write new to it passes it on the same way
    /// [default: 8]
    #[arg(long, env = "KVS_PUSH_FANOUT", value_name = "N")]
    pub push_fanout: Option<usize>,
    /// Answer reads while joining or re-bootstrapping (possibly stale data) instead of
    /// 503 [default: false]
    #[arg(long, env = "KVS_SERVE_STALE", value_name = "BOOL")]
    pub serve_stale: Option<bool>,
    /// Changes kept for watchers to resume from [default: 100000]
    #[arg(long, env = "KVS_WATCH_LOG_ENTRIES", value_name = "N")]
    pub watch_log_entries: Option<u64>,
    /// Changes older than this are no longer kept for watchers [default: 24h]
    #[arg(long, env = "KVS_WATCH_LOG_AGE", value_name = "DURATION")]
    pub watch_log_age: Option<String>,
    /// Largest request body accepted, in bytes [default: 1048576]
    #[arg(long, env = "KVS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most connections open at once; more wait until one closes [default: 4096]
    #[arg(long, env = "KVS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Close a connection that takes longer to send a request's headers, or stays idle
    /// between requests [default: 20s]
    #[arg(long, env = "KVS_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// PEM certificate (chain) to serve TLS with; reloaded when the file changes or on
    /// SIGHUP [default: plain HTTP]
    #[arg(long, env = "KVS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "KVS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA peers verify each other against (from `kvs certs`)
    #[arg(long, env = "KVS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// `mtls`: peers must present a certificate signed by --tls-ca on /internal/
    /// [default: none]
    #[arg(long, env = "KVS_TLS_PEER_AUTH", value_name = "none|mtls")]
    pub tls_peer_auth: Option<String>,
    /// Public key client tokens are verified with (`kvs token keypair`); with it,
    /// every request needs a token except what --auth-anonymous allows
    #[arg(long, env = "KVS_AUTH_PUBLIC_KEY", value_name = "FILE")]
    pub auth_public_key: Option<PathBuf>,
    /// Comma-separated permissions of requests without a token, e.g. read:todos
    /// [default: none but /health/live and /health/ready]
    #[arg(
        long,
        env = "KVS_AUTH_ANONYMOUS",
        value_name = "ACTION:SCOPE,...",
        value_delimiter = ','
    )]
    pub auth_anonymous: Option<Vec<String>>,
    /// Requests per second each client (token subject, else IP) may make; 0 for no
    /// limit [default: 0]
    #[arg(long, env = "KVS_LIMITS_REQUESTS_PER_SECOND", value_name = "N")]
    pub requests_per_second: Option<u32>,
    /// Requests a client may make at once above the rate [default: the rate]
    #[arg(long, env = "KVS_LIMITS_BURST", value_name = "N")]
    pub burst: Option<u32>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info]
    #[arg(long, env = "KVS_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "KVS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Benchmarks only: skip Merkle tree upkeep to measure what it costs. Such a node
    /// cannot sync, so it refuses seeds. Hidden from --help.
    #[arg(long, env = "KVS_BENCH_SKIP_MERKLE", hide = true)]
    pub bench_skip_merkle: bool,
}
