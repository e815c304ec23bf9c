//! kvs: a replicated key-value daemon.
//!
//! Modules in reading order, lowest layer first (imports only point up this list):
//! - [`model`]: keys, versions and their order, records and merge, todos. No IO.
//! - [`clock`]: the hybrid logical clock that stamps local writes; bounded skew.
//! - [`merkle`]: the tictac Merkle tree over key hashes. Pure.
//! - [`codec`]: byte encodings for disk and wire; capped zstd.
//! - [`token`], [`tls`], [`keys`]: client tokens and permissions; TLS (rustls) with
//!   certificate reload; making certificates and token keys (rcgen).
//! - [`cli`], [`config`]: raw flags, then the validated configuration.
//! - [`wire`]: the peer protocol's byte formats, every decode checked.
//! - [`cluster`]: membership (pure state machine) and its shared handle.
//! - [`transport`]: the `Peer` trait: what one node can ask another.
//! - [`store`]: sled; `apply_with` and `remove_if_current` are the only mutations.
//! - [`metrics`]: the Prometheus exposition (requests, flushes, and a state snapshot).
//! - [`backup`]: the backup stream format, its checked reader, and restore.
//! - [`service`]: todo and document rules, preconditions, readiness, the replica side.
//! - [`peer`]: the reqwest client implementing `Peer` (deadlines per call).
//! - [`sync`]: the protocol in one place: rules, round, driver, receiver, push.
//! - [`gc`], [`gossip`]: the purge task; join, gossip rounds and farewell.
//! - [`http`]: the axum router, extractors, the error table, OpenAPI and `/docs`.
//! - [`telemetry`]: log setup.
//! - [`client`]: the command-line client (`kvs todo|kv|cluster`) over the public API.
//! - [`daemon`]: the composition root that starts and stops everything.

pub mod auth;
pub mod backup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod gc;
pub mod gossip;
pub mod http;
pub mod keys;
pub mod merkle;
pub mod metrics;
pub mod model;
pub mod peer;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod transport;
pub mod wire;
