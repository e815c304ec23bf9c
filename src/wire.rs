//! The peer protocol's byte formats — the only definition of what crosses `/internal/`.
//!
//! Version 1. Every body is checked on decode: declared counts and lengths are bounded
//! before anything is allocated, keys and records are validated, and a body with
//! trailing bytes is refused. A bad body is rejected whole.
//!
//! - root: `GET /internal/v1/root` → 32 raw bytes (the Merkle root).
//! - nodes: `POST /internal/v1/nodes` with [`NodesRequest`] → the children of each
//!   named node, 16 × 32 raw bytes per node, in request order.
//! - segments: `POST /internal/v1/segments` with a list of leaf segments → a zstd
//!   [`encode_batch`] of every record in them.
//! - records: `POST /internal/v1/records` with a zstd batch → applied by merge.

use crate::codec::{self, CodecError};
use crate::merkle::{Hash, DEPTH, FANOUT};
use crate::model::{Key, KeyError, Record};

pub const VERSION: u8 = 1;
/// At most this many nodes or segments in one request.
pub const MAX_ITEMS: usize = 65_536;
/// At most this many records in one batch.
pub const MAX_BATCH_RECORDS: usize = 200_000;
/// A decompressed batch may not exceed this.
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;
/// A single record may not exceed this (the HTTP body limit is smaller).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

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

/// "Send me the children of these inner nodes, all on one level."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesRequest {
    pub level: u8,
    pub indices: Vec<u32>,
}

impl NodesRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + 4 * self.indices.len());
        out.push(VERSION);
        out.push(self.level);
        out.extend_from_slice(&(self.indices.len() as u32).to_be_bytes());
        for index in &self.indices {
            out.extend_from_slice(&index.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<NodesRequest, WireError> {
        let mut reader = Reader { bytes };
        reader.version()?;
        let level = reader.u8("level")?;
        let count = reader.count("node", MAX_ITEMS)?;
        let mut indices = Vec::with_capacity(count);
        for _ in 0..count {
            let index = reader.u32("node index")?;
            let inner = usize::from(level) < DEPTH && (index as usize) < FANOUT.pow(level.into());
            if !inner {
                return Err(WireError::BadNode { level, index });
            }
            indices.push(index);
        }
        reader.finish()?;
        Ok(NodesRequest { level, indices })
    }
}

/// Children hashes, `FANOUT` per requested node, concatenated.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<u8> {
    hashes.iter().flat_map(|hash| hash.iter().copied()).collect()
}

pub fn decode_hashes(bytes: &[u8], expected: usize) -> Result<Vec<Hash>, WireError> {
    if bytes.len() != expected * 32 {
        return Err(WireError::Truncated("hash list"));
    }
    Ok(bytes.chunks_exact(32).map(|chunk| chunk.try_into().expect("chunks of 32")).collect())
}

pub fn encode_root(root: &Hash) -> Vec<u8> {
    root.to_vec()
}

pub fn decode_root(bytes: &[u8]) -> Result<Hash, WireError> {
    bytes.try_into().map_err(|_| WireError::Truncated("root"))
}

/// A list of leaf segments.
pub fn encode_segments(segments: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + 2 * segments.len());
    out.push(VERSION);
    out.extend_from_slice(&(segments.len() as u32).to_be_bytes());
    for segment in segments {
        out.extend_from_slice(&segment.to_be_bytes());
    }
    out
}

pub fn decode_segments(bytes: &[u8]) -> Result<Vec<u16>, WireError> {
    let mut reader = Reader { bytes };
    reader.version()?;
    let count = reader.count("segment", MAX_ITEMS)?;
    let segments = (0..count).map(|_| reader.u16("segment")).collect::<Result<_, _>>()?;
    reader.finish()?;
    Ok(segments)
}

/// Records, uncompressed: version, count, then per record key length (u16), key, record
/// length (u32), record ([`codec::encode_record`]).
pub fn encode_batch(records: &[(Key, Record)]) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (key, record) in records {
        let key = key.to_bytes();
        let record = codec::encode_record(record);
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(&key);
        out.extend_from_slice(&(record.len() as u32).to_be_bytes());
        out.extend_from_slice(&record);
    }
    out
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<(Key, Record)>, WireError> {
    let mut reader = Reader { bytes };
    reader.version()?;
    let count = reader.count("record", MAX_BATCH_RECORDS)?;
    let mut records = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let key_len = reader.u16("key length")? as usize;
        let key = Key::from_bytes(reader.take(key_len, "key")?)?;
        let record_len = reader.u32("record length")? as usize;
        if record_len > MAX_RECORD_BYTES {
            return Err(WireError::TooMany {
                what: "record byte",
                count: record_len,
                limit: MAX_RECORD_BYTES,
            });
        }
        let record = codec::decode_record(reader.take(record_len, "record")?)?;
        records.push((key, record));
    }
    reader.finish()?;
    Ok(records)
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
    use uuid::Uuid;

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
                };
                (Key::doc(&path).unwrap(), record)
            },
        )
    }

    proptest! {
        #[test]
        fn batches_round_trip(records in prop::collection::vec(arb_entry(), 0..20)) {
            prop_assert_eq!(decompress_batch(&compress_batch(&records)).unwrap(), records);
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&bytes);
            let _ = decompress_batch(&bytes);
            let _ = NodesRequest::decode(&bytes);
            let _ = decode_segments(&bytes);
        }

        #[test]
        fn requests_round_trip(level in 0u8..4, indices in prop::collection::vec(0u32..16, 0..16), segments in prop::collection::vec(any::<u16>(), 0..50)) {
            let request = NodesRequest { level, indices: indices.into_iter().map(|i| i % 16u32.pow(level.into()).max(1)).collect() };
            prop_assert_eq!(NodesRequest::decode(&request.encode()).unwrap(), request);
            prop_assert_eq!(decode_segments(&encode_segments(&segments)).unwrap(), segments);
        }
    }

    #[test]
    fn lies_about_sizes_are_caught_before_allocating() {
        let mut lying = vec![VERSION];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode_batch(&lying), Err(WireError::TooMany { .. })));
        let mut short = vec![VERSION];
        short.extend_from_slice(&1u32.to_be_bytes());
        short.extend_from_slice(&5u16.to_be_bytes());
        short.extend_from_slice(b"kv/a");
        assert_eq!(decode_batch(&short), Err(WireError::Truncated("key")));
        let bad_node = NodesRequest { level: 4, indices: vec![0] }.encode();
        assert_eq!(NodesRequest::decode(&bad_node), Err(WireError::BadNode { level: 4, index: 0 }));
        let mut trailing = encode_segments(&[1]);
        trailing.push(0);
        assert_eq!(decode_segments(&trailing), Err(WireError::Trailing(1)));
        let mut wrong_version = encode_segments(&[1]);
        wrong_version[0] = 9;
        assert_eq!(decode_segments(&wrong_version), Err(WireError::Version(9)));
    }
}
