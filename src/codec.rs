//! Byte framing for disk and wire: the record encoding (with a format version byte)
//! and zstd with a capped output. Every decode here is checked; nothing trusts lengths.

use std::cell::RefCell;
use std::io::Read;

use uuid::Uuid;

use crate::model::{NodeId, Origin, Record, Timestamp, Value, Version};

/// Bump when the record encoding changes; decoders refuse versions they do not know.
pub const RECORD_FORMAT: u8 = 1;

/// Encoded version: ts (8) + joined_at (8) + node (16) + uuid (16).
pub const VERSION_BYTES: usize = 48;
/// Format byte + version + value kind.
pub const RECORD_HEADER_BYTES: usize = 1 + VERSION_BYTES + 1;
/// An expiring record's expiry (ms, 8 bytes) follows the header.
const EXPIRY_BYTES: usize = 8;

/// The value kinds: a tombstone and a value (the only two before expiry existed, so
/// their bytes are unchanged), then the same two with an expiry after the header (an
/// expiring value, and the expired form of one).
const KIND_TOMBSTONE: u8 = 0;
const KIND_LIVE: u8 = 1;
const KIND_LIVE_EXPIRING: u8 = 2;
const KIND_EXPIRED: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record is {0} bytes, shorter than its {RECORD_HEADER_BYTES}-byte header")]
    Truncated(usize),
    #[error("record format {0} is not known to this build (expected {RECORD_FORMAT})")]
    UnknownFormat(u8),
    #[error("record value kind {0} is not known")]
    UnknownKind(u8),
    #[error("a tombstone carries {0} value bytes")]
    TombstoneWithValue(usize),
    #[error("compressed payload is corrupt: {0}")]
    Decompress(String),
    #[error("payload decompresses to more than the {0}-byte limit")]
    TooLarge(usize),
}

pub fn encode_version(version: &Version) -> [u8; VERSION_BYTES] {
    let mut out = [0u8; VERSION_BYTES];
    out[0..8].copy_from_slice(&version.ts.raw().to_be_bytes());
    out[8..16].copy_from_slice(&version.origin.joined_at.to_be_bytes());
    out[16..32].copy_from_slice(version.origin.node.0.as_bytes());
    out[32..48].copy_from_slice(version.uuid.as_bytes());
    out
}

pub fn decode_version(bytes: &[u8; VERSION_BYTES]) -> Version {
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(word)
    };
    let uuid_at = |at: usize| {
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[at..at + 16]);
        Uuid::from_bytes(id)
    };
    Version {
        ts: Timestamp::from_raw(u64_at(0)),
        origin: Origin { node: NodeId(uuid_at(16)), joined_at: u64_at(8) },
        uuid: uuid_at(32),
    }
}

pub fn encode_record(record: &Record) -> Vec<u8> {
    let value = record.live_bytes().unwrap_or_default();
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + EXPIRY_BYTES + value.len());
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&encode_version(&record.version));
    out.push(match (record.is_live(), record.expires_at) {
        (false, None) => KIND_TOMBSTONE,
        (true, None) => KIND_LIVE,
        (true, Some(_)) => KIND_LIVE_EXPIRING,
        (false, Some(_)) => KIND_EXPIRED,
    });
    if let Some(at) = record.expires_at {
        out.extend_from_slice(&at.to_be_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// The header of an encoded record, without copying the value (what a start-up scan
/// needs).
pub struct Header<'a> {
    pub version: &'a [u8; VERSION_BYTES],
    pub live: bool,
    pub expires_at: Option<u64>,
    /// Where the value starts.
    value_at: usize,
}

pub fn peek_record(bytes: &[u8]) -> Result<Header<'_>, CodecError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[0] != RECORD_FORMAT {
        return Err(CodecError::UnknownFormat(bytes[0]));
    }
    let version: &[u8; VERSION_BYTES] =
        bytes[1..1 + VERSION_BYTES].try_into().expect("length checked above");
    let kind = bytes[1 + VERSION_BYTES];
    let (live, expiring) = match kind {
        KIND_TOMBSTONE => (false, false),
        KIND_LIVE => (true, false),
        KIND_LIVE_EXPIRING => (true, true),
        KIND_EXPIRED => (false, true),
        other => return Err(CodecError::UnknownKind(other)),
    };
    let mut value_at = RECORD_HEADER_BYTES;
    let mut expires_at = None;
    if expiring {
        let expiry = bytes
            .get(value_at..value_at + EXPIRY_BYTES)
            .ok_or(CodecError::Truncated(bytes.len()))?;
        expires_at = Some(u64::from_be_bytes(expiry.try_into().expect("8 bytes")));
        value_at += EXPIRY_BYTES;
    }
    if !live && bytes.len() > value_at {
        return Err(CodecError::TombstoneWithValue(bytes.len() - value_at));
    }
    Ok(Header { version, live, expires_at, value_at })
}

pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    let header = peek_record(bytes)?;
    let value =
        if header.live { Value::Live(bytes[header.value_at..].to_vec()) } else { Value::Tombstone };
    Ok(Record { version: decode_version(header.version), value, expires_at: header.expires_at })
}

/// zstd's level for wire batches: fast (they are compressed once and sent once).
const LEVEL: i32 = 3;

thread_local! {
    // A zstd context is hundreds of kilobytes to set up; a profile of the cluster write
    // path showed a fresh one per push (compressing) and per received batch
    // (decompressing). Each thread keeps one of each instead.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// zstd at a fast level, with this thread's context.
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    COMPRESSOR
        .with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = zstd::bulk::Compressor::new(LEVEL).ok();
            }
            slot.as_mut().and_then(|compressor| compressor.compress(bytes).ok())
        })
        .unwrap_or_else(|| {
            zstd::bulk::compress(bytes, LEVEL)
                .expect("compressing into a growable buffer cannot fail")
        })
}

/// Decompresses at most `limit` bytes; a payload that would expand past it is refused
/// before it is fully inflated, so a zip bomb costs at most `limit` bytes of memory.
///
/// When the frames say how big they inflate to (ours always do) and that fits, it is
/// one call into this thread's context with exactly that much room (a frame that lies
/// about its size fails as corrupt); otherwise the stream is read through a cap.
pub fn decompress_capped(bytes: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    if let Some(size) = zstd::bulk::Decompressor::upper_bound(bytes).filter(|&n| n <= limit) {
        let done = DECOMPRESSOR.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = zstd::bulk::Decompressor::new().ok();
            }
            slot.as_mut().map(|decompressor| decompressor.decompress(bytes, size))
        });
        if let Some(done) = done {
            return done.map_err(|e| CodecError::Decompress(e.to_string()));
        }
    }
    let decoder = zstd::stream::read::Decoder::new(bytes)
        .map_err(|e| CodecError::Decompress(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Decompress(e.to_string()))?;
    if out.len() > limit {
        return Err(CodecError::TooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u128>(),
            any::<u128>(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(ts, joined_at, node, uuid, value, expires_at)| Record {
                version: Version {
                    ts: Timestamp::from_raw(ts),
                    origin: Origin { node: NodeId(Uuid::from_u128(node)), joined_at },
                    uuid: Uuid::from_u128(uuid),
                },
                value: value.map_or(Value::Tombstone, Value::Live),
                expires_at,
            })
    }

    proptest! {
        #[test]
        fn records_round_trip(record in arb_record()) {
            prop_assert_eq!(decode_record(&encode_record(&record)).unwrap(), record);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_record(&bytes);
            let _ = decompress_capped(&bytes, 1024);
        }

        #[test]
        fn compression_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert_eq!(decompress_capped(&compress(&bytes), 4096).unwrap(), bytes);
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let tombstone = Record::new(decode_version(&[0; VERSION_BYTES]), Value::Tombstone);
        let expired = Record { expires_at: Some(7), ..tombstone.clone() };
        let mut expired_bytes = encode_record(&expired);
        assert_eq!(decode_record(&expired_bytes), Ok(expired));
        expired_bytes.push(1);
        assert_eq!(decode_record(&expired_bytes), Err(CodecError::TombstoneWithValue(1)));
        let short = RECORD_HEADER_BYTES + 3;
        assert_eq!(decode_record(&expired_bytes[..short]), Err(CodecError::Truncated(short)));
        let mut bytes = encode_record(&tombstone);
        assert!(decode_record(&bytes).is_ok());
        bytes.push(1);
        assert_eq!(decode_record(&bytes), Err(CodecError::TombstoneWithValue(1)));
        bytes[1 + VERSION_BYTES] = 4;
        assert_eq!(decode_record(&bytes), Err(CodecError::UnknownKind(4)));
        bytes[0] = 9;
        assert_eq!(decode_record(&bytes), Err(CodecError::UnknownFormat(9)));
        assert_eq!(decode_record(&bytes[..10]), Err(CodecError::Truncated(10)));
    }

    #[test]
    fn decompression_is_capped() {
        let bomb = compress(&vec![0u8; 1 << 20]);
        assert_eq!(decompress_capped(&bomb, 1024), Err(CodecError::TooLarge(1024)));
        assert_eq!(decompress_capped(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        // A stream that does not say its size (as a streaming client sends) is capped
        // while it is read.
        let mut unsized_bomb = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut unsized_bomb, 3).unwrap();
        std::io::Write::write_all(&mut encoder, &vec![0u8; 1 << 20]).unwrap();
        encoder.finish().unwrap();
        assert_eq!(decompress_capped(&unsized_bomb, 1024), Err(CodecError::TooLarge(1024)));
        assert_eq!(decompress_capped(&unsized_bomb, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn a_frame_that_understates_its_size_is_refused_as_corrupt() {
        let mut frame = compress(&[7u8; 5_000]);
        // The single-segment header: magic (4), descriptor (1), content size (2 bytes
        // for 256..65,791, stored minus 256). Claim 300 bytes instead of 5,000.
        assert_eq!(frame[4] & 0xC0, 0x40, "a two-byte content size");
        let claimed = (300u16 - 256).to_le_bytes();
        let at = 5 + usize::from(frame[4] & 0x20 == 0);
        frame[at..at + 2].copy_from_slice(&claimed);
        assert!(matches!(decompress_capped(&frame, 1 << 20), Err(CodecError::Decompress(_))));
        // And the context is fine for the next one.
        assert_eq!(decompress_capped(&compress(b"ok"), 16).unwrap(), b"ok");
    }
}
