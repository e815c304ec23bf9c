//! The `meta` tree: the store format, this node's identity, and what the sync layer
//! must remember across restarts (purge horizon, last contact, an unfinished rebase).

use super::{Store, StoreError};

pub(super) const META_FORMAT: &str = "store_format";
pub(super) const META_NODE_ID: &str = "node_id";
pub(super) const META_JOINED_AT: &str = "joined_at";
const META_LAST_CONTACT: &str = "last_contact";
const META_PURGE_HORIZON: &str = "purge_horizon";
const META_REBASING: &str = "rebasing";
const META_PEER_SEEN: &str = "peer_seen";
/// Written and flushed to learn whether a faulted store can write again.
pub(super) const META_PROBE: &str = "probe";

impl Store {
    /// When this node last completed a sync with a peer (ms), if ever.
    pub fn last_contact(&self) -> Result<Option<u64>, StoreError> {
        self.meta_u64(META_LAST_CONTACT)
    }

    fn meta_u64(&self, name: &'static str) -> Result<Option<u64>, StoreError> {
        match self.inner.engine()?.meta.get(name)? {
            Some(bytes) => {
                let bytes: [u8; 8] =
                    bytes.as_ref().try_into().map_err(|_| StoreError::CorruptMeta(name))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    /// The purge horizon (ms): this node may lack tombstones written before it, because
    /// it purged them or refused them as expired. 0 if it never did either.
    pub fn purge_horizon(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64(META_PURGE_HORIZON)?.unwrap_or(0))
    }

    /// Moves the purge horizon forward to `ms` (never back); returns whether it moved.
    pub fn raise_purge_horizon(&self, ms: u64) -> Result<bool, StoreError> {
        let previous =
            self.inner.engine()?.meta.fetch_and_update(META_PURGE_HORIZON, |current| {
                let current = current
                    .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                    .map_or(0, u64::from_be_bytes);
                Some(current.max(ms).to_be_bytes().to_vec())
            })?;
        let previous = previous
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(ms > previous)
    }

    pub fn set_last_contact(&self, now_ms: u64) -> Result<(), StoreError> {
        self.inner.engine()?.meta.insert(META_LAST_CONTACT, &now_ms.to_be_bytes())?;
        Ok(())
    }

    /// Whether a rebase round (see `sync`) was under way when the node last stopped.
    pub fn rebasing(&self) -> Result<bool, StoreError> {
        Ok(self.inner.engine()?.meta.get(META_REBASING)?.is_some())
    }

    /// Whether a peer has ever called this node (then it is no longer a cluster of one).
    pub fn peer_seen(&self) -> Result<bool, StoreError> {
        Ok(self.inner.engine()?.meta.get(META_PEER_SEEN)?.is_some())
    }

    /// Records, durably, that a peer has called this node.
    pub fn set_peer_seen(&self) -> Result<(), StoreError> {
        if !self.peer_seen()? {
            self.inner.engine()?.meta.insert(META_PEER_SEEN, &[1])?;
            self.inner.flush_engine()?;
        }
        Ok(())
    }

    /// Records that a rebase is under way (`true`) or done, durably before returning.
    pub fn set_rebasing(&self, rebasing: bool) -> Result<(), StoreError> {
        if rebasing {
            self.inner.engine()?.meta.insert(META_REBASING, &[1])?;
        } else {
            self.inner.engine()?.meta.remove(META_REBASING)?;
        }
        self.inner.flush_engine()?;
        Ok(())
    }
}
