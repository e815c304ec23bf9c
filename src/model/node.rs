use std::fmt;
use uuid::Uuid;

/// A node's identity: created once per data directory and kept for its lifetime.
/// A wiped node gets a new one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(pub Uuid);

impl NodeId {
    pub fn random() -> Self {
        NodeId(Uuid::new_v4())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Who wrote a version: the node id and the millisecond that node first joined.
///
/// `joined_at` travels inside every record so the tie rule ("the older node wins")
/// never needs to consult the current membership, which may have forgotten the writer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Origin {
    pub node: NodeId,
    pub joined_at: u64,
}
