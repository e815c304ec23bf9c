//! The peer protocol in one place: both sides of anti-entropy, push on write, and the
//! rules that keep deletes deleted.
//!
//! - [`rules`]: the purge-horizon rules and what a peer may claim (pure).
//! - [`round`]: one anti-entropy round with one peer (the driver side).
//! - [`driver`]: who runs rounds: at most one per peer at a time, rounds with different
//!   peers in parallel (bounded), a rebase excluding every other round; the anti-entropy
//!   loop, the join's first round and the operator's `sync?peer=` all go through it.
//! - [`receiver`]: the serving side (what `/internal/v1/*` answers), below `http`.
//! - [`push`]: committed local writes to peers at once (best effort), along
//!   [`spread`]: a tree over the id ring, so each peer gets a write once.
//! - [`faults`]: a transport wrapper that injects faults, for tests.
//!
//! Everything talks to peers through [`crate::transport::Peer`].

pub mod driver;
pub mod faults;
pub mod push;
pub mod receiver;
pub mod round;
pub mod rules;
pub mod spread;

pub use driver::{anti_entropy_loop, Driver};
pub use push::push_loop;
pub use round::{sync_round, RoundReport};

use crate::service::ServiceError;
use crate::transport::PeerError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("merging the peer's records failed: {0}")]
    Merge(#[from] ServiceError),
    #[error("reading our records failed: {0}")]
    Read(#[from] tokio::task::JoinError),
    /// The peer purged tombstones written after our last contact: the round must run
    /// as a rebase (the driver handles this; callers never see it).
    #[error("the peer's purge horizon calls for a rebase")]
    RebaseNeeded,
    /// `sync?peer=` named an address that is not an alive member.
    #[error("{0} is not an alive member of this cluster")]
    NotAMember(String),
}
