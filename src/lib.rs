//! kvs: a replicated key-value daemon.
//!
//! Modules in reading order, lowest layer first (imports only point up this list):
//! - [`model`]: keys, versions and their order, records and merge, todos. No IO.
//! - [`clock`]: the hybrid logical clock that stamps local writes.
//! - [`merkle`]: the tictac Merkle tree over key hashes. Pure.
//! - [`codec`]: byte encodings for disk and wire; capped zstd.
//! - [`store`]: sled; `Store::apply_with` is the only mutation; group commit.

pub mod clock;
pub mod codec;
pub mod merkle;
pub mod model;
pub mod store;
