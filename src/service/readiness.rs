//! Whether the node may serve data: one owner (this type), explicit phases, and a table
//! of the transitions allowed between them. Every other module asks it to move; a
//! transition the table does not allow is refused and logged, never applied.
//!
//! ```text
//! Starting ──▶ Joining ──▶ Ready ◀──▶ Rebasing
//!    │            │          ▲           ▲
//!    │            ▼          │           │
//!    └───────▶ Standalone ───┘───────────┘
//! ```
//! - `Joining`: seeds are configured; not ready until the first round with a peer.
//! - `Standalone`: no seed answered (or none is configured); serves alone, and leaves
//!   the phase when a peer appears.
//! - `Rebasing`: a peer has purged tombstones written after our last contact, so our copy
//!   may hold deleted data until a round with such a peer completes. Persisted by the
//!   replica (`Store::set_rebasing`) so a crash mid-rebase resumes it.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Joining,
    Standalone,
    Ready,
    Rebasing,
}

impl Phase {
    /// Whether data routes answer in this phase.
    pub fn serves(self) -> bool {
        matches!(self, Phase::Standalone | Phase::Ready)
    }

    pub fn reason(self) -> &'static str {
        match self {
            Phase::Starting => "the node is starting",
            Phase::Joining => "joining the cluster: the first sync has not completed",
            Phase::Standalone => "no seed answered within join_timeout (or none is configured)",
            Phase::Ready => "",
            Phase::Rebasing => {
                "a peer purged tombstones written after our last contact: rebasing on its copy"
            }
        }
    }

    /// The transition table.
    pub fn may_become(self, next: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, next),
            (Starting, Joining | Standalone | Rebasing)
                | (Joining, Ready | Standalone | Rebasing)
                | (Standalone, Ready | Rebasing)
                | (Ready, Rebasing)
                | (Rebasing, Ready)
        )
    }
}

/// A refused transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("readiness cannot go from {from:?} to {to:?}")]
pub struct Refused {
    pub from: Phase,
    pub to: Phase,
}

/// What HTTP shows: whether data routes answer, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyState {
    pub phase: Phase,
    pub ready: bool,
    /// No seed answered (or none was configured): this node runs alone.
    pub standalone: bool,
    pub reason: String,
}

/// The readiness of one node: a cheap-clone handle; readers never block writers.
#[derive(Clone)]
pub struct Readiness(Arc<watch::Sender<Phase>>);

impl Readiness {
    pub fn new(initial: Phase) -> Self {
        Readiness(Arc::new(watch::Sender::new(initial)))
    }

    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    pub fn current(&self) -> ReadyState {
        let phase = self.phase();
        ReadyState {
            phase,
            ready: phase.serves(),
            standalone: phase == Phase::Standalone,
            reason: phase.reason().to_owned(),
        }
    }

    /// Moves to `next` if the table allows it from the current phase (atomically);
    /// staying in the same phase is a no-op that succeeds.
    pub fn advance(&self, next: Phase) -> Result<(), Refused> {
        let mut refused = None;
        self.0.send_if_modified(|phase| {
            if *phase == next {
                false
            } else if phase.may_become(next) {
                tracing::info!(from = ?*phase, to = ?next, "readiness changed");
                *phase = next;
                true
            } else {
                refused = Some(Refused { from: *phase, to: next });
                false
            }
        });
        refused.map_or(Ok(()), Err)
    }

    /// A standalone node that knows an alive peer (`has_peers`) is in a cluster: it
    /// becomes ready as a member. Called after each gossip round and when a peer's
    /// gossip reaches us, so the mode shown changes with the member list.
    pub fn leave_standalone_if(&self, has_peers: bool) {
        if has_peers && self.phase() == Phase::Standalone && self.advance(Phase::Ready).is_ok() {
            tracing::info!("peers found: leaving standalone mode");
        }
    }

    /// Waits until the phase changes (for tests and tasks that follow it).
    pub async fn changed(&self) {
        let mut receiver = self.0.subscribe();
        let _ = receiver.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    const ALL: [Phase; 5] = [Starting, Joining, Standalone, Ready, Rebasing];

    #[test]
    fn only_the_table_s_transitions_happen() {
        for from in ALL {
            for to in ALL {
                let readiness = Readiness::new(from);
                let result = readiness.advance(to);
                if from == to || from.may_become(to) {
                    assert_eq!(result, Ok(()));
                    assert_eq!(readiness.phase(), to);
                } else {
                    assert_eq!(result, Err(Refused { from, to }));
                    assert_eq!(readiness.phase(), from);
                }
            }
        }
    }

    #[test]
    fn nothing_goes_back_to_starting_or_joining_and_rebasing_ends_only_in_ready() {
        for from in ALL {
            assert!(!from.may_become(Starting));
            if from != Starting {
                assert!(!from.may_become(Joining));
            }
        }
        assert!(ALL.iter().all(|to| Rebasing.may_become(*to) == (*to == Ready)));
    }

    #[test]
    fn only_ready_and_standalone_serve() {
        let serving: Vec<Phase> = ALL.into_iter().filter(|phase| phase.serves()).collect();
        assert_eq!(serving, vec![Standalone, Ready]);
        let state = Readiness::new(Rebasing).current();
        assert!(!state.ready && !state.reason.is_empty());
    }

    #[test]
    fn only_a_standalone_node_that_has_peers_becomes_a_member() {
        for from in ALL {
            for has_peers in [false, true] {
                let readiness = Readiness::new(from);
                readiness.leave_standalone_if(has_peers);
                let expected = if from == Standalone && has_peers { Ready } else { from };
                assert_eq!(readiness.phase(), expected, "from {from:?}, peers: {has_peers}");
            }
        }
    }
}
