//! Backups: the stream `GET /admin/v1/backup` sends, `kvs backup` saves and checks, and
//! `kvs restore` turns into a data directory.
//!
//! A backup is one line of JSON (the [`Header`]: format, version, creation time, the
//! node it came from), then frames — a 4-byte big-endian length and a zstd record batch
//! in the peer wire format — then a zero length and one line of JSON (the [`Trailer`]:
//! how many records and the Merkle root over exactly them). The root is at the end
//! because writes go on while the node streams: only once the last record is out is it
//! known what was written. Every reader recomputes the root and refuses a stream whose
//! root or count does not match (a truncated or altered file).

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::merkle::{self, MerkleTree};
use crate::model::{Key, Record};
use crate::store::{Store, StoreError};
use crate::{codec, wire};

pub const FORMAT: &str = "kvs-backup";
pub const VERSION: u32 = 1;
/// Largest frame a reader accepts (a batch is split well below this).
const MAX_FRAME: u32 = 64 * 1024 * 1024;
/// Records per frame the node sends.
pub const FRAME_RECORDS: usize = 4_096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// When the node began the backup (ms since the epoch): a restored node's last
    /// contact, so the purge rules treat it as a replica last in touch at that time.
    pub created_at_ms: u64,
    pub node_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trailer {
    pub records: u64,
    /// Hex Merkle root over the records in the stream (tombstones included).
    pub merkle_root: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a kvs backup: {0}")]
    Format(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

/// Encodes the header line.
pub fn header_line(header: &Header) -> Vec<u8> {
    let mut line = serde_json::to_vec(header).expect("a header serializes");
    line.push(b'\n');
    line
}

/// One frame: the length, then the compressed batch.
pub fn frame(records: &[(Key, Record)]) -> Vec<u8> {
    let batch = wire::compress_batch(records);
    let mut out = Vec::with_capacity(batch.len() + 4);
    out.extend_from_slice(&(batch.len() as u32).to_be_bytes());
    out.extend_from_slice(&batch);
    out
}

/// The end marker and the trailer line.
pub fn end(trailer: &Trailer) -> Vec<u8> {
    let mut out = 0u32.to_be_bytes().to_vec();
    out.extend(serde_json::to_vec(trailer).expect("a trailer serializes"));
    out.push(b'\n');
    out
}

/// The Merkle tree over records as they stream past, the same way the store keeps it.
#[derive(Default)]
pub struct RootBuilder {
    tree: MerkleTree,
    records: u64,
}

impl RootBuilder {
    pub fn add(&mut self, key: &Key, record: &Record) {
        let bytes = key.to_bytes();
        let entry = merkle::entry_hash(&bytes, &codec::encode_version(&record.version));
        self.tree.toggle(merkle::segment_of(&bytes), &entry);
        self.records += 1;
    }

    pub fn trailer(&self) -> Trailer {
        Trailer { records: self.records, merkle_root: merkle::hex(&self.tree.root()) }
    }
}

/// Reads a backup stream, checking it as it goes.
pub struct Reader<R> {
    input: R,
    pub header: Header,
    root: RootBuilder,
    trailer: Option<Trailer>,
}

impl<R: BufRead> Reader<R> {
    pub fn new(mut input: R) -> Result<Reader<R>, BackupError> {
        let mut line = Vec::new();
        (&mut input).take(64 * 1024).read_until(b'\n', &mut line)?;
        let header: Header = serde_json::from_slice(&line)
            .map_err(|error| BackupError::Format(format!("no header line ({error})")))?;
        if header.format != FORMAT {
            return Err(BackupError::Format(format!("format {:?}", header.format)));
        }
        if header.version != VERSION {
            return Err(BackupError::Format(format!(
                "version {} (this kvs reads version {VERSION})",
                header.version
            )));
        }
        Ok(Reader { input, header, root: RootBuilder::default(), trailer: None })
    }

    /// The next batch of records, or `None` after the trailer, which must match.
    pub fn next_batch(&mut self) -> Result<Option<Vec<(Key, Record)>>, BackupError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let mut length = [0u8; 4];
        self.input
            .read_exact(&mut length)
            .map_err(|_| BackupError::Damaged("it ends before its trailer (truncated?)".into()))?;
        let length = u32::from_be_bytes(length);
        if length == 0 {
            let mut line = Vec::new();
            (&mut self.input).take(64 * 1024).read_until(b'\n', &mut line)?;
            let trailer: Trailer = serde_json::from_slice(&line)
                .map_err(|error| BackupError::Damaged(format!("bad trailer ({error})")))?;
            let computed = self.root.trailer();
            if computed != trailer {
                return Err(BackupError::Damaged(format!(
                    "the trailer says {} records with root {}, the stream holds {} with root {}",
                    trailer.records, trailer.merkle_root, computed.records, computed.merkle_root
                )));
            }
            self.trailer = Some(trailer);
            return Ok(None);
        }
        if length > MAX_FRAME {
            return Err(BackupError::Damaged(format!("a frame of {length} bytes")));
        }
        let mut batch = vec![0; length as usize];
        self.input
            .read_exact(&mut batch)
            .map_err(|_| BackupError::Damaged("a frame is cut short (truncated?)".into()))?;
        let records = wire::decompress_batch(&batch)
            .map_err(|error| BackupError::Damaged(format!("a frame does not decode: {error}")))?;
        for (key, record) in &records {
            self.root.add(key, record);
        }
        Ok(Some(records))
    }

    /// The checked trailer, once the stream has been read to its end.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }
}

/// Copies a backup stream to `out`, checking it; returns the trailer. `progress` is told
/// the records copied so far.
pub fn copy_checked<R: BufRead, W: Write>(
    input: R,
    out: &mut W,
    mut progress: impl FnMut(u64),
) -> Result<(Header, Trailer), BackupError> {
    let mut reader = Reader::new(input)?;
    out.write_all(&header_line(&reader.header))?;
    let mut copied = 0;
    while let Some(records) = reader.next_batch()? {
        out.write_all(&frame(&records))?;
        copied += records.len() as u64;
        progress(copied);
    }
    let trailer = reader.trailer().cloned().expect("read to the end");
    out.write_all(&end(&trailer))?;
    out.flush()?;
    Ok((reader.header, trailer))
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: Header,
    pub trailer: Trailer,
    pub node_id: String,
}

/// Restores `file` into `data_dir`, which must be empty or absent. The restored node has
/// a new identity, and its last contact is the backup's creation time: when it joins,
/// the purge rules treat it as a replica last in touch then (a restore older than the
/// tombstone TTL rebases instead of bringing deleted records back).
pub fn restore(file: &Path, data_dir: &Path, now_ms: u64) -> Result<Restored, BackupError> {
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            return Err(BackupError::Refused(format!(
                "{} is not empty: restore into a new directory",
                data_dir.display()
            )));
        }
    }
    let input = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut reader = Reader::new(input)?;
    let store = Store::open(data_dir, now_ms)?;
    let outcome = (|| {
        while let Some(records) = reader.next_batch()? {
            for (key, record) in records {
                store.apply(&key, record)?;
            }
        }
        let trailer = reader.trailer().cloned().expect("read to the end");
        let root = merkle::hex(&store.merkle_root());
        if root != trailer.merkle_root {
            return Err(BackupError::Damaged(format!(
                "the restored store's root {root} is not the backup's {}",
                trailer.merkle_root
            )));
        }
        store.set_last_contact(reader.header.created_at_ms)?;
        store.set_peer_seen()?;
        Ok(trailer)
    })();
    let closed = store.close();
    let trailer = match outcome {
        Ok(trailer) => trailer,
        Err(error) => {
            drop(store);
            // Leave nothing half-restored behind.
            let _ = std::fs::remove_dir_all(data_dir);
            return Err(error);
        }
    };
    closed?;
    Ok(Restored { node_id: store.identity().node.to_string(), header: reader.header, trailer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Timestamp, Value, Version};

    fn record(n: u64) -> (Key, Record) {
        let key = Key::doc(&format!("k/{n}")).unwrap();
        let version = Version {
            ts: Timestamp::from_raw(n << 16),
            origin: Origin { node: crate::model::NodeId(uuid::Uuid::nil()), joined_at: 1 },
            uuid: uuid::Uuid::nil(),
        };
        (
            key,
            Record {
                version,
                value: Value::Live(format!("{{\"n\":{n}}}").into_bytes()),
                expires_at: None,
            },
        )
    }

    fn trailer_of(records: &[(Key, Record)]) -> Trailer {
        let mut root = RootBuilder::default();
        for (key, record) in records {
            root.add(key, record);
        }
        root.trailer()
    }

    fn stream_with(records: &[(Key, Record)], trailer: &Trailer) -> Vec<u8> {
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            created_at_ms: 5,
            node_id: "x".into(),
        };
        let mut out = header_line(&header);
        for chunk in records.chunks(3) {
            out.extend(frame(chunk));
        }
        out.extend(end(trailer));
        out
    }

    fn stream(records: &[(Key, Record)]) -> Vec<u8> {
        stream_with(records, &trailer_of(records))
    }

    #[test]
    fn a_stream_reads_back_and_a_damaged_one_is_refused() {
        let records: Vec<_> = (1..=10).map(record).collect();
        let bytes = stream(&records);
        let mut copy = Vec::new();
        let (header, trailer) = copy_checked(&bytes[..], &mut copy, |_| {}).unwrap();
        assert_eq!((header.created_at_ms, trailer.records), (5, 10));
        assert_eq!(copy, bytes);
        let truncated = &bytes[..bytes.len() - 40];
        assert!(copy_checked(truncated, &mut Vec::new(), |_| {}).is_err());
        // A record missing from the middle: the count and root no longer match.
        let mut short = records.clone();
        short.remove(4);
        let forged = stream_with(&short, &trailer_of(&records));
        let error = copy_checked(&forged[..], &mut Vec::new(), |_| {}).unwrap_err();
        assert!(error.to_string().contains("the stream holds 9"), "{error}");
        let other = br#"{"format":"zip","version":1,"created_at_ms":1,"node_id":""}"#;
        assert!(Reader::new(&[&other[..], b"\n"].concat()[..]).is_err());
    }

    #[test]
    fn a_restore_rebuilds_the_records_and_refuses_a_full_directory() {
        let records: Vec<_> = (1..=50).map(record).collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.kvsb");
        std::fs::write(&file, stream(&records)).unwrap();
        let target = dir.path().join("data");
        let restored = restore(&file, &target, 1_000).unwrap();
        assert_eq!(restored.trailer.records, 50);
        let store = Store::open(&target, 2_000).unwrap();
        assert_eq!(merkle::hex(&store.merkle_root()), restored.trailer.merkle_root);
        assert_eq!(store.last_contact().unwrap(), Some(5));
        assert_eq!(store.get(&records[7].0).unwrap(), Some(records[7].1.clone()));
        store.close().unwrap();
        drop(store);
        let error = restore(&file, &target, 1_000).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error}");
    }
}
