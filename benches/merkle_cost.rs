//! What Merkle upkeep costs on the write path, as a share of a store apply.
//!
//! Applies N todo records to a real store (sled, no flush wait), then performs exactly
//! the Merkle work those applies did (two entry hashes and two tree updates per write)
//! on a separate tree, and prints both and their ratio. Run:
//! `cargo bench --bench merkle_cost`.

use std::time::Instant;

use kvs::codec;
use kvs::merkle::{self, MerkleTree};
use kvs::model::todo::StoredTodo;
use kvs::model::{Key, NodeId, Origin, Record, Timestamp, Value, Version};
use kvs::store::Store;
use uuid::Uuid;

const WRITES: u64 = 200_000;

fn record(n: u64) -> (Key, Record) {
    let todo = StoredTodo {
        extern_id: format!("bench-{n}"),
        todo: format!("a todo of typical length, number {n}"),
        completed: n.is_multiple_of(2),
        created_at: n,
        updated_at: n,
    };
    let version = Version {
        ts: Timestamp::from_raw(1 << 40 | n),
        origin: Origin { node: NodeId(Uuid::from_u128(1)), joined_at: 1 },
        uuid: Uuid::from_u128(u128::from(n)),
    };
    (
        Key::Todo(kvs::model::todo::todo_id(&todo.extern_id)),
        Record::new(version, Value::Live(todo.encode())),
    )
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let writes: Vec<(Key, Record)> = (0..WRITES).map(record).collect();

    let started = Instant::now();
    for (key, record) in &writes {
        store.apply(key, record.clone()).unwrap();
    }
    let apply = started.elapsed();

    let mut tree = MerkleTree::new();
    let started = Instant::now();
    for (key, record) in &writes {
        let key_bytes = key.to_bytes();
        let segment = merkle::segment_of(&key_bytes);
        let version = codec::encode_version(&record.version);
        // An update XORs an old entry out and a new one in: twice the work of an insert.
        let entry = merkle::entry_hash(&key_bytes, &version);
        tree.toggle(segment, &entry);
        let again = merkle::entry_hash(&key_bytes, &version);
        tree.toggle(segment, &again);
    }
    let upkeep = started.elapsed();
    std::hint::black_box(tree.root());

    let per = |d: std::time::Duration| d.as_nanos() as f64 / WRITES as f64;
    println!(
        "store apply (with Merkle upkeep): {:.0} ns/write ({:.0} writes/s)",
        per(apply),
        WRITES as f64 / apply.as_secs_f64()
    );
    println!("Merkle upkeep alone:              {:.0} ns/write", per(upkeep));
    println!("upkeep share of an apply:         {:.1} %", 100.0 * per(upkeep) / per(apply));
    store.close().unwrap();
}
