//! The peer protocol's byte formats — the only definition of what crosses `/internal/`.
//!
//! Version 1. Every body is checked on decode: declared counts and lengths are bounded
//! before anything is allocated, keys and records are validated, and a body with
//! trailing bytes is refused. A bad body is rejected whole.
//!
//! - root: `POST /internal/v1/root` with a [`RootRequest`] (the asker's root) →
//!   [`RootReply`]: the Merkle root (32 raw bytes), the purge horizon and the last
//!   contact (ms, 8 bytes each, 0 for none), and when the roots differ the 256 level-2
//!   digests.
//! - nodes: `POST /internal/v1/nodes` with [`NodesRequest`] → the descendants `depth`
//!   levels below each named node, `16^depth` [`Digest`]s per node, in request order.
//! - reconcile: `POST /internal/v1/reconcile` with a [`ReconcileRequest`] (leaf segments,
//!   each with the fingerprints of the asker's records in it) → a [`ReconcileReply`]:
//!   the answerer's records the asker lacks, and which of the asker's it lacks.
//! - records: `POST /internal/v1/records` with a zstd batch → applied by merge.
//! - spread: `POST /internal/v1/spread` with zstd [`Pushed`] writes → merged, and those
//!   new to the receiver passed on within their span (push on write, `sync::spread`).
//!   `POST /internal/v1/push` takes a plain batch from nodes older than the spread.
//!
//! Below the root, node hashes and record fingerprints travel as 4-byte [`Digest`]s: one
//! of the eight 4-byte windows of the 32-byte hash, picked by the asker at random for
//! each round and named in every request. The windows of a blake3 output (and of XORs
//! of them) are independent, so two different subtrees or records look equal with
//! probability 2⁻³² in one round, and a miss is not repeated in the next: the root, which
//! is always compared in full, still differs, and the next round looks through another
//! window.

use crate::codec::{self, CodecError};
use crate::merkle::{Hash, DEPTH, FANOUT};
use crate::model::{Key, KeyError, Record};
use uuid::Uuid;

pub const VERSION: u8 = 1;
/// At most this many nodes or segments in one request, digests in one reply.
pub const MAX_ITEMS: usize = 65_536;
/// Bytes of a hash sent below the root.
pub const DIGEST_BYTES: usize = 4;
/// Windows of a 32-byte hash a digest may be taken from.
pub const WINDOWS: u8 = (32 / DIGEST_BYTES) as u8;
/// At most this many fingerprints in one reconcile request (4 MiB).
pub const MAX_FINGERPRINTS: usize = 1 << 20;
/// At most this many records in one batch.
pub const MAX_BATCH_RECORDS: usize = 200_000;
/// A decompressed batch may not exceed this (so a compression bomb costs at most this).
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Senders split record batches at about this many bytes of values (see [`batches`]),
/// well below [`MAX_BATCH_BYTES`] whatever the per-record overhead.
pub const SEND_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// A single record may not exceed this; a peer batch holding a larger one is refused.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// The largest public body limit a node may be configured with: 1 MiB below
/// [`MAX_RECORD_BYTES`] leaves room for a record's key, version and framing, so whatever
/// a client may write on any node, every peer accepts as a record.
pub const MAX_PUBLIC_BODY_BYTES: usize = MAX_RECORD_BYTES - 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("body ends early: {0}")]
    Truncated(&'static str),
    #[error("wire version {0} is not supported (this node speaks {VERSION})")]
    Version(u8),
    #[error("{what} count {count} is over the limit {limit}")]
    TooMany { what: &'static str, count: usize, limit: usize },
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("level {level} index {index} is not an inner Merkle node")]
    BadNode { level: u8, index: u32 },
    #[error("depth {depth} below level {level} is outside the tree")]
    BadDepth { level: u8, depth: u8 },
    #[error("reply does not match its request: {0}")]
    Mismatch(&'static str),
    #[error("span flag {0} is neither 0 (not passed on) nor 1 (passed on)")]
    BadFlag(u8),
    #[error("digest window {0} does not exist (there are {WINDOWS})")]
    BadWindow(u8),
    #[error("bad key: {0}")]
    Key(#[from] KeyError),
    #[error("bad record: {0}")]
    Record(#[from] CodecError),
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self, what: &'static str, limit: usize) -> Result<usize, WireError> {
        let count = self.u32(what)? as usize;
        if count > limit {
            return Err(WireError::TooMany { what, count, limit });
        }
        Ok(count)
    }

    /// One record of a batch: key length (u16), key, record length (u32), record.
    fn record(&mut self) -> Result<(Key, Record), WireError> {
        let key_len = self.u16("key length")? as usize;
        let key = Key::from_bytes(self.take(key_len, "key")?)?;
        let record_len = self.u32("record length")? as usize;
        if record_len > MAX_RECORD_BYTES {
            return Err(WireError::TooMany {
                what: "record byte",
                count: record_len,
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok((key, codec::decode_record(self.take(record_len, "record")?)?))
    }

    fn version(&mut self) -> Result<(), WireError> {
        match self.u8("version")? {
            VERSION => Ok(()),
            other => Err(WireError::Version(other)),
        }
    }

    fn finish(self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.bytes.len()))
        }
    }
}

/// A hash as it travels below the root: [`DIGEST_BYTES`] of its bytes, from one window.
pub type Digest = [u8; DIGEST_BYTES];

/// Window `window` (< [`WINDOWS`]) of `hash`.
pub fn digest(hash: &Hash, window: u8) -> Digest {
    let at = usize::from(window % WINDOWS) * DIGEST_BYTES;
    hash[at..at + DIGEST_BYTES].try_into().expect("a window lies inside the hash")
}

impl Reader<'_> {
    fn window(&mut self) -> Result<u8, WireError> {
        match self.u8("digest window")? {
            window if window < WINDOWS => Ok(window),
            other => Err(WireError::BadWindow(other)),
        }
    }
}

/// "Send me the descendants `depth` levels below these inner nodes, all on one level,
/// as digests through `window`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesRequest {
    pub window: u8,
    pub level: u8,
    pub depth: u8,
    pub indices: Vec<u32>,
}

impl NodesRequest {
    /// Digests the reply carries: `16^depth` per node.
    pub fn reply_len(&self) -> usize {
        self.indices.len() * FANOUT.pow(self.depth.into())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * self.indices.len());
        out.push(VERSION);
        out.push(self.window);
        out.push(self.level);
        out.push(self.depth);
        out.extend_from_slice(&(self.indices.len() as u32).to_be_bytes());
        for index in &self.indices {
            out.extend_from_slice(&index.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<NodesRequest, WireError> {
        let mut reader = Reader { bytes };
        reader.version()?;
        let window = reader.window()?;
        let level = reader.u8("level")?;
        let depth = reader.u8("depth")?;
        if depth == 0 || usize::from(level) + usize::from(depth) > DEPTH {
            return Err(WireError::BadDepth { level, depth });
        }
        let limit = MAX_ITEMS / FANOUT.pow(depth.into());
        let count = reader.count("node", limit)?;
        let mut indices = Vec::with_capacity(count);
        for _ in 0..count {
            let index = reader.u32("node index")?;
            if index as usize >= FANOUT.pow(level.into()) {
                return Err(WireError::BadNode { level, index });
            }
            indices.push(index);
        }
        reader.finish()?;
        Ok(NodesRequest { window, level, depth, indices })
    }
}

pub fn encode_digests(hashes: &[Hash], window: u8) -> Vec<u8> {
    hashes.iter().flat_map(|hash| digest(hash, window)).collect()
}

pub fn decode_digests(bytes: &[u8], expected: usize) -> Result<Vec<Digest>, WireError> {
    if bytes.len() != expected * DIGEST_BYTES {
        return Err(WireError::Mismatch("digest list length"));
    }
    Ok(bytes.chunks_exact(DIGEST_BYTES).map(|chunk| chunk.try_into().expect("exact")).collect())
}

/// The first request of a round: the asker's root, and the digest window of the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootRequest {
    pub window: u8,
    pub root: Hash,
}

impl RootRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(34);
        out.push(VERSION);
        out.push(self.window);
        out.extend_from_slice(&self.root);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RootRequest, WireError> {
        let mut reader = Reader { bytes };
        reader.version()?;
        let window = reader.window()?;
        let root = reader.take(32, "root")?.try_into().expect("32 bytes");
        reader.finish()?;
        Ok(RootRequest { window, root })
    }
}

/// Level whose digests a root reply carries when the roots differ.
pub const TOP_LEVEL: u8 = 2;
/// Digests at [`TOP_LEVEL`]: 256.
pub const TOP_WIDTH: usize = FANOUT * FANOUT;

/// The answer to a [`RootRequest`]: the root, what tells a stale replica (see
/// `service::SyncState`), and — only when the roots differ — the 256 digests of level
/// 2 through the request's window, which saves the walk a round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootReply {
    pub root: Hash,
    pub purge_horizon: u64,
    pub last_contact: Option<u64>,
    pub top: Vec<Digest>,
}

impl RootReply {
    /// Bytes of the reply without `top`.
    pub const BYTES: usize = 48;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::BYTES + DIGEST_BYTES * self.top.len());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.purge_horizon.to_be_bytes());
        out.extend_from_slice(&self.last_contact.unwrap_or(0).to_be_bytes());
        self.top.iter().for_each(|digest| out.extend_from_slice(digest));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RootReply, WireError> {
        let mut reader = Reader { bytes };
        let root = reader.take(32, "root")?.try_into().expect("32 bytes");
        let mut u64_field =
            |what| reader.take(8, what).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
        let purge_horizon = u64_field("purge horizon")?;
        let last_contact = Some(u64_field("last contact")?).filter(|ms| *ms > 0);
        let top = match reader.bytes.len() {
            0 => Vec::new(),
            _ => decode_digests(reader.bytes, TOP_WIDTH)?,
        };
        Ok(RootReply { root, purge_horizon, last_contact, top })
    }
}

/// Leaf segments, each with the fingerprints (digests of `entry_hash` through `window`)
/// of the asker's records in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileRequest {
    pub window: u8,
    pub segments: Vec<(u16, Vec<Digest>)>,
}

impl ReconcileRequest {
    pub fn fingerprints(&self) -> usize {
        self.segments.iter().map(|(_, prints)| prints.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let capacity = 6 + 6 * self.segments.len() + DIGEST_BYTES * self.fingerprints();
        let mut out = Vec::with_capacity(capacity);
        out.push(VERSION);
        out.push(self.window);
        out.extend_from_slice(&(self.segments.len() as u32).to_be_bytes());
        for (segment, prints) in &self.segments {
            out.extend_from_slice(&segment.to_be_bytes());
            out.extend_from_slice(&(prints.len() as u32).to_be_bytes());
            prints.iter().for_each(|print| out.extend_from_slice(print));
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ReconcileRequest, WireError> {
        let mut reader = Reader { bytes };
        reader.version()?;
        let window = reader.window()?;
        let count = reader.count("segment", MAX_ITEMS)?;
        let mut segments = Vec::with_capacity(count);
        let mut total = 0;
        for _ in 0..count {
            let segment = reader.u16("segment")?;
            let prints = reader.count("fingerprint", MAX_FINGERPRINTS - total)?;
            total += prints;
            let bytes = reader.take(prints * DIGEST_BYTES, "fingerprints")?;
            let prints = bytes.chunks_exact(DIGEST_BYTES).map(|c| c.try_into().expect("exact"));
            segments.push((segment, prints.collect()));
        }
        reader.finish()?;
        Ok(ReconcileRequest { window, segments })
    }
}

/// The answer to a [`ReconcileRequest`]. The answerer may stop early to bound its reply:
/// it handled the first `covered` segments; the asker sends the rest again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReply {
    pub covered: u32,
    /// Positions, in the request's order over all segments, of fingerprints the answerer
    /// does not hold: the asker should push those records.
    pub wanted: Vec<u32>,
    /// The answerer's records in the covered segments whose fingerprints the asker did
    /// not send.
    pub records: Vec<(Key, Record)>,
    /// Bytes the records took on the wire (set by `decode`; `encode` ignores it).
    pub records_bytes: usize,
}

impl ReconcileReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.covered.to_be_bytes());
        out.extend_from_slice(&(self.wanted.len() as u32).to_be_bytes());
        self.wanted.iter().for_each(|at| out.extend_from_slice(&at.to_be_bytes()));
        out.extend_from_slice(&compress_batch(&self.records));
        out
    }

    /// Decodes the reply to `request`, checking it against the request.
    pub fn decode(bytes: &[u8], request: &ReconcileRequest) -> Result<ReconcileReply, WireError> {
        let mut reader = Reader { bytes };
        reader.version()?;
        let covered = reader.u32("covered")?;
        let segments = request.segments.len();
        if (covered == 0 && segments > 0) || covered as usize > segments {
            return Err(WireError::Mismatch("covered segment count"));
        }
        let sent: usize =
            request.segments[..covered as usize].iter().map(|(_, prints)| prints.len()).sum();
        let count = reader.count("wanted position", sent)?;
        let mut wanted = Vec::with_capacity(count);
        for _ in 0..count {
            let at = reader.u32("wanted position")?;
            if at as usize >= sent || wanted.last().is_some_and(|last| *last >= at) {
                return Err(WireError::Mismatch("wanted positions"));
            }
            wanted.push(at);
        }
        let records_bytes = reader.bytes.len();
        let records = decompress_batch(reader.bytes)?;
        Ok(ReconcileReply { covered, wanted, records, records_bytes })
    }
}

/// Records, uncompressed: version, count, then per record key length (u16), key, record
/// length (u32), record ([`codec::encode_record`]).
pub fn encode_batch(records: &[(Key, Record)]) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (key, record) in records {
        put_record(&mut out, key, record);
    }
    out
}

fn put_record(out: &mut Vec<u8>, key: &Key, record: &Record) {
    let key = key.to_bytes();
    let record = codec::encode_record(record);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&key);
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(&record);
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<(Key, Record)>, WireError> {
    let mut reader = Reader { bytes };
    reader.version()?;
    let count = reader.count("record", MAX_BATCH_RECORDS)?;
    let mut records = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        records.push(reader.record()?);
    }
    reader.finish()?;
    Ok(records)
}

/// A fresh write as pushed (`POST /internal/v1/spread`): the record, and where the span
/// of the id ring its receiver passes it on to ends (`sync::spread`); `None`: nowhere.
pub type Pushed = (Key, Record, Option<Uuid>);

/// Pushed writes, uncompressed: like [`encode_batch`], each record followed by a flag
/// byte (0: not passed on; 1: passed on) and, after a 1, the span's end (16 bytes).
pub fn encode_pushed(writes: &[Pushed]) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
    for (key, record, until) in writes {
        put_record(&mut out, key, record);
        match until {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                out.extend_from_slice(id.as_bytes());
            }
        }
    }
    out
}

pub fn decode_pushed(bytes: &[u8]) -> Result<Vec<Pushed>, WireError> {
    let mut reader = Reader { bytes };
    reader.version()?;
    let count = reader.count("record", MAX_BATCH_RECORDS)?;
    let mut writes = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let (key, record) = reader.record()?;
        let until = match reader.u8("span flag")? {
            0 => None,
            1 => Some(Uuid::from_slice(reader.take(16, "span end")?).expect("16 bytes")),
            other => return Err(WireError::BadFlag(other)),
        };
        writes.push((key, record, until));
    }
    reader.finish()?;
    Ok(writes)
}

/// Pushed writes as they travel: zstd-compressed.
pub fn compress_pushed(writes: &[Pushed]) -> Vec<u8> {
    codec::compress(&encode_pushed(writes))
}

pub fn decompress_pushed(bytes: &[u8]) -> Result<Vec<Pushed>, WireError> {
    decode_pushed(&codec::decompress_capped(bytes, MAX_BATCH_BYTES)?)
}

/// Splits `records` into consecutive batches of at most [`SEND_BATCH_BYTES`] of keys and
/// values each (a larger record travels alone), so every batch decodes within
/// [`MAX_BATCH_BYTES`].
pub fn batches(records: &[(Key, Record)]) -> Vec<&[(Key, Record)]> {
    split_by_bytes(records, |(key, record)| (key, record))
}

/// [`batches`] for pushed writes.
pub fn pushed_batches(writes: &[Pushed]) -> Vec<&[Pushed]> {
    split_by_bytes(writes, |(key, record, _)| (key, record))
}

fn split_by_bytes<T>(records: &[T], parts: impl Fn(&T) -> (&Key, &Record)) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (at, item) in records.iter().enumerate() {
        let (key, record) = parts(item);
        let size = 96 + key.to_bytes().len() + record.live_bytes().map_or(0, <[u8]>::len);
        if at > start && bytes + size > SEND_BATCH_BYTES {
            out.push(&records[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// A batch as it travels: zstd-compressed.
pub fn compress_batch(records: &[(Key, Record)]) -> Vec<u8> {
    codec::compress(&encode_batch(records))
}

pub fn decompress_batch(bytes: &[u8]) -> Result<Vec<(Key, Record)>, WireError> {
    decode_batch(&codec::decompress_capped(bytes, MAX_BATCH_BYTES)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Origin, Timestamp, Value, Version};
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = (Key, Record)> {
        ("[a-z/]{1,40}", any::<u64>(), any::<u128>(), prop::option::of("[ -~]{0,40}")).prop_map(
            |(path, ts, uuid, value)| {
                let record = Record {
                    version: Version {
                        ts: Timestamp::from_raw(ts),
                        origin: Origin {
                            node: NodeId(Uuid::from_u128(uuid ^ 1)),
                            joined_at: ts / 2,
                        },
                        uuid: Uuid::from_u128(uuid),
                    },
                    value: value.map_or(Value::Tombstone, |v| Value::Live(v.into_bytes())),
                    expires_at: (ts % 3 == 0).then_some(ts / 3),
                };
                (Key::doc(&path).unwrap(), record)
            },
        )
    }

    proptest! {
        /// Batches cover the records in order, each within the byte budget unless it
        /// holds a single record.
        #[test]
        fn batches_cover_everything_in_order_within_budget(
            sizes in proptest::collection::vec(0usize..6_000_000, 0..40),
        ) {
            let records: Vec<(Key, Record)> = sizes
                .iter()
                .enumerate()
                .map(|(n, size)| {
                    let record = Record {
                        version: Version {
                            ts: Timestamp::from_raw(n as u64),
                            origin: Origin { node: NodeId(Uuid::from_u128(1)), joined_at: 1 },
                            uuid: Uuid::from_u128(n as u128),
                        },
                        value: Value::Live(vec![b'x'; *size]),
                        expires_at: None,
                    };
                    (Key::doc(&format!("k{n}")).unwrap(), record)
                })
                .collect();
            let parts = batches(&records);
            let joined: Vec<&(Key, Record)> = parts.iter().flat_map(|part| part.iter()).collect();
            prop_assert_eq!(joined.len(), records.len());
            prop_assert!(joined.iter().zip(&records).all(|(a, b)| std::ptr::eq(*a, b)));
            for part in parts {
                prop_assert!(!part.is_empty());
                let bytes: usize = part.iter().map(|(_, r)| r.live_bytes().map_or(0, <[u8]>::len)).sum();
                prop_assert!(part.len() == 1 || bytes <= SEND_BATCH_BYTES);
                prop_assert!(encode_batch(part).len() <= MAX_BATCH_BYTES);
            }
        }
    }

    proptest! {
        #[test]
        fn batches_round_trip(records in prop::collection::vec(arb_entry(), 0..20)) {
            prop_assert_eq!(decompress_batch(&compress_batch(&records)).unwrap(), records);
        }

        #[test]
        fn pushed_writes_round_trip(
            writes in prop::collection::vec(
                (arb_entry(), prop::option::of(any::<u128>()))
                    .prop_map(|((key, record), until)| (key, record, until.map(Uuid::from_u128))),
                0..20,
            )
        ) {
            prop_assert_eq!(decompress_pushed(&compress_pushed(&writes)).unwrap(), writes);
        }

        #[test]
        fn a_pushed_body_that_is_cut_short_or_flagged_wrong_is_refused(
            entry in arb_entry(),
            until in any::<u128>(),
            flag in 2u8..,
        ) {
            let encoded = encode_pushed(&[(entry.0, entry.1, Some(Uuid::from_u128(until)))]);
            for cut in 0..encoded.len() {
                prop_assert!(decode_pushed(&encoded[..cut]).is_err(), "cut at {}", cut);
            }
            let mut flagged = encoded.clone();
            let at = flagged.len() - 17;
            flagged[at] = flag;
            prop_assert!(matches!(decode_pushed(&flagged), Err(WireError::BadFlag(f)) if f == flag));
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&bytes);
            let _ = decompress_batch(&bytes);
            let _ = decode_pushed(&bytes);
            let _ = NodesRequest::decode(&bytes);
            let _ = RootRequest::decode(&bytes);
            let _ = RootReply::decode(&bytes);
            if let Ok(request) = ReconcileRequest::decode(&bytes) {
                let _ = ReconcileReply::decode(&bytes, &request);
            }
        }

        #[test]
        fn requests_round_trip(
            window in 0u8..WINDOWS,
            level in 0u8..4,
            depth in 1u8..5,
            indices in prop::collection::vec(any::<u32>(), 0..16),
            segments in prop::collection::vec((any::<u16>(), prop::collection::vec(any::<Digest>(), 0..20)), 0..20),
        ) {
            let depth = depth.min(DEPTH as u8 - level);
            let fits = MAX_ITEMS / FANOUT.pow(depth.into());
            let indices = indices.into_iter().take(fits).map(|i| i % 16u32.pow(level.into())).collect();
            let request = NodesRequest { window, level, depth, indices };
            prop_assert_eq!(NodesRequest::decode(&request.encode()).unwrap(), request);
            let request = ReconcileRequest { window, segments };
            prop_assert_eq!(ReconcileRequest::decode(&request.encode()).unwrap(), request);
        }

        #[test]
        fn reconcile_replies_round_trip(
            prints in prop::collection::vec(any::<Digest>(), 1..40),
            picks in prop::collection::btree_set(0u32..40, 0..10),
            records in prop::collection::vec(arb_entry(), 0..10),
        ) {
            let request =
                ReconcileRequest { window: 0, segments: vec![(7, prints.clone()), (9, Vec::new())] };
            let wanted: Vec<u32> = picks.into_iter().filter(|at| (*at as usize) < prints.len()).collect();
            let header = 9 + 4 * wanted.len();
            let reply = ReconcileReply { covered: 2, wanted, records, records_bytes: 0 };
            let encoded = reply.encode();
            let decoded = ReconcileReply::decode(&encoded, &request).unwrap();
            prop_assert_eq!(decoded.records_bytes, encoded.len() - header);
            prop_assert_eq!(decoded, ReconcileReply { records_bytes: encoded.len() - header, ..reply });
        }

        #[test]
        fn root_messages_round_trip(
            root in any::<Hash>(),
            horizon: u64,
            contact in prop::option::of(1u64..),
            with_top: bool,
            window in 0u8..WINDOWS,
        ) {
            let request = RootRequest { window, root };
            prop_assert_eq!(RootRequest::decode(&request.encode()).unwrap(), request);
            let top = if with_top { vec![[7; DIGEST_BYTES]; TOP_WIDTH] } else { Vec::new() };
            let reply = RootReply { root, purge_horizon: horizon, last_contact: contact, top };
            let encoded = reply.encode();
            prop_assert_eq!(encoded.len(), RootReply::BYTES + if with_top { 4 * TOP_WIDTH } else { 0 });
            prop_assert_eq!(RootReply::decode(&encoded).unwrap(), reply);
            prop_assert!(RootReply::decode(&encoded[..47]).is_err());
            if with_top {
                prop_assert!(RootReply::decode(&encoded[..RootReply::BYTES + 4]).is_err());
            }
        }

        #[test]
        fn a_digest_is_the_named_window(hash in any::<Hash>(), window in 0u8..WINDOWS) {
            let at = usize::from(window) * DIGEST_BYTES;
            prop_assert_eq!(&digest(&hash, window)[..], &hash[at..at + DIGEST_BYTES]);
        }
    }

    #[test]
    fn lies_about_sizes_are_caught_before_allocating() {
        let mut lying = vec![VERSION];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode_batch(&lying), Err(WireError::TooMany { .. })));
        let mut lying = vec![VERSION, 0];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(ReconcileRequest::decode(&lying), Err(WireError::TooMany { .. })));
        let mut short = vec![VERSION];
        short.extend_from_slice(&1u32.to_be_bytes());
        short.extend_from_slice(&5u16.to_be_bytes());
        short.extend_from_slice(b"kv/a");
        assert_eq!(decode_batch(&short), Err(WireError::Truncated("key")));
        let mut prints = vec![VERSION, 0, 0, 0, 0, 1, 0, 7];
        prints.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(ReconcileRequest::decode(&prints), Err(WireError::TooMany { .. })));
        let bad_node = NodesRequest { window: 0, level: 3, depth: 1, indices: vec![4096] }.encode();
        assert_eq!(
            NodesRequest::decode(&bad_node),
            Err(WireError::BadNode { level: 3, index: 4096 })
        );
        let too_deep = NodesRequest { window: 0, level: 3, depth: 2, indices: vec![0] }.encode();
        assert_eq!(
            NodesRequest::decode(&too_deep),
            Err(WireError::BadDepth { level: 3, depth: 2 })
        );
        let no_window = NodesRequest { window: WINDOWS, level: 0, depth: 1, indices: vec![0] };
        assert_eq!(NodesRequest::decode(&no_window.encode()), Err(WireError::BadWindow(WINDOWS)));
        let request = ReconcileRequest { window: 1, segments: vec![(1, vec![[0; DIGEST_BYTES]])] };
        let mut trailing = request.encode();
        trailing.push(0);
        assert_eq!(ReconcileRequest::decode(&trailing), Err(WireError::Trailing(1)));
        let mut wrong_version = request.encode();
        wrong_version[0] = 9;
        assert_eq!(ReconcileRequest::decode(&wrong_version), Err(WireError::Version(9)));
        let mut bad_window = request.encode();
        bad_window[1] = 200;
        assert_eq!(ReconcileRequest::decode(&bad_window), Err(WireError::BadWindow(200)));
    }

    #[test]
    fn replies_that_do_not_match_the_request_are_refused() {
        let prints = vec![[1; DIGEST_BYTES], [2; DIGEST_BYTES]];
        let request = ReconcileRequest { window: 0, segments: vec![(1, prints), (2, vec![])] };
        let decode = |reply: ReconcileReply| ReconcileReply::decode(&reply.encode(), &request);
        let reply = |covered: u32, wanted: Vec<u32>| ReconcileReply {
            covered,
            wanted,
            ..ReconcileReply::default()
        };
        assert_eq!(decode(reply(0, vec![])), Err(WireError::Mismatch("covered segment count")));
        assert_eq!(decode(reply(3, vec![])), Err(WireError::Mismatch("covered segment count")));
        assert_eq!(decode(reply(1, vec![2])), Err(WireError::Mismatch("wanted positions")));
        assert_eq!(decode(reply(1, vec![1, 0])), Err(WireError::Mismatch("wanted positions")));
        assert_eq!(decode(reply(1, vec![0, 1])).unwrap().wanted, vec![0, 1]);
    }
}
