//! kvs: a replicated key-value daemon.
//!
//! Modules in reading order, lowest layer first (imports only point up this list):
//! - [`model`]: keys, versions and their order, records and merge, todos. No IO.
//! - [`clock`]: the hybrid logical clock that stamps local writes.
//! - [`merkle`]: the tictac Merkle tree over key hashes. Pure.
//! - [`codec`]: byte encodings for disk and wire; capped zstd.
//! - [`cli`], [`config`]: raw flags, then the validated configuration.
//! - [`store`]: sled; `Store::apply_with` is the only mutation; group commit.
//! - [`service`]: todo and document rules, preconditions, readiness.
//! - [`http`]: the axum router, extractors, the error table, OpenAPI and `/docs`.
//! - [`telemetry`]: log setup.
//! - [`daemon`]: the composition root that starts and stops everything.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod gc;
pub mod gossip;
pub mod http;
pub mod merkle;
pub mod model;
pub mod peer;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod transport;
pub mod wire;
