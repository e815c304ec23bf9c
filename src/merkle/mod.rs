//! The Merkle ("tictac") tree over the key-hash space. Pure: no sled, no tokio.
//!
//! A fixed array of [`LEAVES`] segments is indexed by the top bits of `blake3(key)`.
//! A segment's hash is the XOR of `entry_hash(key, version)` over the records in it, and
//! every inner node is the XOR of its [`FANOUT`] children. XOR makes an update
//! order-free and O(depth): XOR the old entry out and the new one in along one path.
//! Two replicas have equal roots iff they hold the same (key, version) set (up to
//! blake3 collisions); tombstones and equal-`ts` conflicts are visible because the
//! full version is hashed.

pub type Hash = [u8; 32];

/// Children per inner node: one hex digit of the key hash per level.
pub const FANOUT: usize = 16;
/// Levels below the root.
pub const DEPTH: usize = 4;
/// Leaf segments: `FANOUT ^ DEPTH`.
pub const LEAVES: usize = 1 << (4 * DEPTH);

pub const ZERO: Hash = [0; 32];

/// The leaf segment of a key: the top `4 * DEPTH` bits of its blake3 hash.
pub fn segment_of(key: &[u8]) -> u16 {
    let hash = blake3::hash(key);
    let bytes = hash.as_bytes();
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// The hash a record contributes to its segment. Lengths are framed so no two
/// (key, version) pairs share an encoding.
pub fn entry_hash(key: &[u8], version: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(key.len() as u64).to_be_bytes());
    hasher.update(key);
    hasher.update(version);
    *hasher.finalize().as_bytes()
}

fn xor_into(target: &mut Hash, delta: &Hash) {
    for (byte, d) in target.iter_mut().zip(delta) {
        *byte ^= d;
    }
}

/// The whole tree, level by level: `levels[0]` is the root, `levels[DEPTH]` the leaves.
/// About 2.2 MiB; every node exists (an empty one is [`ZERO`]).
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl Default for MerkleTree {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MerkleTree(root = {})", hex(&self.root()))
    }
}

impl MerkleTree {
    pub fn new() -> Self {
        let levels = (0..=DEPTH).map(|level| vec![ZERO; FANOUT.pow(level as u32)]).collect();
        MerkleTree { levels }
    }

    /// Builds a tree from scratch out of `(segment, entry_hash)` pairs.
    pub fn from_entries(entries: impl IntoIterator<Item = (u16, Hash)>) -> Self {
        let mut tree = MerkleTree::new();
        for (segment, entry) in entries {
            xor_into(&mut tree.levels[DEPTH][usize::from(segment)], &entry);
        }
        for level in (0..DEPTH).rev() {
            for index in 0..FANOUT.pow(level as u32) {
                let mut node = ZERO;
                for child in tree.children(level, index) {
                    xor_into(&mut node, child);
                }
                tree.levels[level][index] = node;
            }
        }
        tree
    }

    /// XORs `entry` into a segment and all its ancestors: adds an entry that is absent,
    /// removes one that is present.
    pub fn toggle(&mut self, segment: u16, entry: &Hash) {
        let mut index = usize::from(segment);
        for level in (0..=DEPTH).rev() {
            xor_into(&mut self.levels[level][index], entry);
            index /= FANOUT;
        }
    }

    pub fn root(&self) -> Hash {
        self.levels[0][0]
    }

    /// The node at `level` (0 = root) and `index` (0-based, left to right), if it exists.
    pub fn node(&self, level: usize, index: usize) -> Option<&Hash> {
        self.levels.get(level)?.get(index)
    }

    /// The [`FANOUT`] children of an inner node.
    ///
    /// # Panics
    /// If `level >= DEPTH` or `index` is out of range for `level`.
    pub fn children(&self, level: usize, index: usize) -> &[Hash] {
        self.descendants(level, index, 1)
    }

    /// The `FANOUT^depth` nodes `depth` levels below a node, left to right.
    ///
    /// # Panics
    /// If `level + depth > DEPTH` or `index` is out of range for `level`.
    pub fn descendants(&self, level: usize, index: usize, depth: usize) -> &[Hash] {
        let width = FANOUT.pow(depth as u32);
        &self.levels[level + depth][index * width..(index + 1) * width]
    }
}

/// Lowercase hex of a hash (for `/health/info` and logs).
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry_of(key: u16, version: u8) -> (u16, Hash) {
        let key_bytes = key.to_be_bytes();
        (segment_of(&key_bytes), entry_hash(&key_bytes, &[version]))
    }

    proptest! {
        /// After any sequence of upserts and deletes, the incrementally kept tree equals
        /// the tree rebuilt from the final set of records.
        #[test]
        fn incremental_equals_rebuilt(ops in prop::collection::vec((0u16..64, prop::option::of(0u8..4)), 0..200)) {
            let mut tree = MerkleTree::new();
            let mut records: BTreeMap<u16, u8> = BTreeMap::new();
            for (key, version) in ops {
                if let Some(old) = records.remove(&key) {
                    let (segment, entry) = entry_of(key, old);
                    tree.toggle(segment, &entry);
                }
                if let Some(version) = version {
                    let (segment, entry) = entry_of(key, version);
                    tree.toggle(segment, &entry);
                    records.insert(key, version);
                }
            }
            let rebuilt = MerkleTree::from_entries(records.iter().map(|(k, v)| entry_of(*k, *v)));
            prop_assert!(tree == rebuilt);
        }

        /// Replicas fed the same records in different orders have equal roots, and a
        /// replica missing one of them has a different root.
        #[test]
        fn order_free_and_sensitive_to_content(
            mut records in prop::collection::btree_map(any::<u16>(), 0u8..4, 1..50),
            rotate in any::<usize>(),
        ) {
            let entries: Vec<_> = records.iter().map(|(k, v)| entry_of(*k, *v)).collect();
            let mut rotated = entries.clone();
            let by = rotate % rotated.len();
            rotated.rotate_left(by);
            let a = MerkleTree::from_entries(entries);
            let b = MerkleTree::from_entries(rotated);
            prop_assert_eq!(a.root(), b.root());

            let (&dropped, _) = records.iter().next().unwrap();
            records.remove(&dropped);
            let c = MerkleTree::from_entries(records.iter().map(|(k, v)| entry_of(*k, *v)));
            prop_assert_ne!(a.root(), c.root());
        }
    }

    #[test]
    fn a_new_version_changes_the_root() {
        let mut tree = MerkleTree::new();
        let (segment, v1) = entry_of(1, 1);
        tree.toggle(segment, &v1);
        let before = tree.root();
        let (_, v2) = entry_of(1, 2);
        tree.toggle(segment, &v1);
        tree.toggle(segment, &v2);
        assert_ne!(before, tree.root());
        assert_ne!(tree.root(), ZERO);
    }

    #[test]
    fn shape() {
        let tree = MerkleTree::new();
        assert_eq!(LEAVES, 65_536);
        assert!(tree.node(DEPTH, LEAVES - 1).is_some());
        assert!(tree.node(DEPTH, LEAVES).is_none());
        assert_eq!(tree.children(DEPTH - 1, 0).len(), FANOUT);
    }
}
