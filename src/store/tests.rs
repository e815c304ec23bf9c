use super::*;
use crate::model::todo::StoredTodo;
use crate::model::{NodeId, Value, Version};
use proptest::prelude::*;
use std::collections::BTreeMap;
use uuid::Uuid;

fn record(ts: u64, joined_at: u64, uuid: u128, value: Option<&[u8]>) -> Record {
    Record {
        version: Version {
            ts: Timestamp::from_raw(ts),
            origin: Origin { node: NodeId(Uuid::from_u128(1)), joined_at },
            uuid: Uuid::from_u128(uuid),
        },
        value: value.map_or(Value::Tombstone, |v| Value::Live(v.to_vec())),
        expires_at: None,
    }
}

fn todo_record(ts: u64, created_at: u64, text: &str) -> Record {
    let todo = StoredTodo {
        extern_id: format!("e-{created_at}"),
        todo: text.into(),
        completed: false,
        created_at,
        updated_at: created_at,
    };
    record(ts, 1, ts.into(), Some(&todo.encode()))
}

fn doc(path: &str) -> Key {
    Key::doc(path).unwrap()
}

#[test]
fn identity_is_created_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), 1_000).unwrap().identity();
    let again = Store::open(dir.path(), 9_999).unwrap().identity();
    assert_eq!(first, again);
    assert_eq!(first.joined_at, 1_000);
}

#[test]
fn a_directory_open_elsewhere_is_refused_by_name_and_reopens_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path(), 1).unwrap();
    match Store::open(dir.path(), 1) {
        Err(StoreError::InUse { dir: named }) => {
            assert_eq!(named, dir.path().display().to_string())
        }
        Err(other) => panic!("expected InUse, got {other}"),
        Ok(_) => panic!("a second open of a held directory succeeded"),
    }
    // Closing and reopening at once, many times (a restart in one process) always works.
    held.close().unwrap();
    drop(held);
    for _ in 0..20 {
        let store = Store::open(dir.path(), 1).unwrap();
        store.close().unwrap();
    }
}

#[test]
fn only_a_superseding_record_changes_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let key = doc("a");
    assert!(store.apply(&key, record(10, 5, 1, Some(b"1"))).unwrap().changed);
    let root = store.merkle_root();
    // Older ts, and equal ts from a younger node: both lose.
    assert!(!store.apply(&key, record(9, 1, 9, Some(b"2"))).unwrap().changed);
    assert!(!store.apply(&key, record(10, 6, 9, Some(b"3"))).unwrap().changed);
    assert_eq!(store.get(&key).unwrap().unwrap().live_bytes(), Some(&b"1"[..]));
    assert_eq!(store.merkle_root(), root);
    // Equal ts from an older node wins.
    assert!(store.apply(&key, record(10, 4, 0, Some(b"4"))).unwrap().changed);
    assert_ne!(store.merkle_root(), root);
}

#[test]
fn a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let key = doc("a");
    let outcome = store.apply_with(&key, |_| Err::<Record, _>("no"));
    assert!(matches!(outcome, Err(ApplyError::Rejected("no"))));
    assert_eq!(store.get(&key).unwrap(), None);
    assert_eq!(store.merkle_root(), merkle::ZERO);
}

#[test]
fn an_invalid_todo_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let key = Key::Todo(Uuid::from_u128(3));
    let error = store.apply(&key, record(1, 1, 1, Some(b"{\"todo\":1}"))).unwrap_err();
    assert!(matches!(error, StoreError::InvalidTodo { .. }));
    assert_eq!(store.get(&key).unwrap(), None);
    assert_eq!(store.counts(), Counts::default());
}

#[test]
fn todos_list_newest_first_and_deleted_ones_leave_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    for (n, created_at) in [(1u128, 300u64), (2, 100), (3, 200)] {
        store
            .apply(&Key::Todo(Uuid::from_u128(n)), todo_record(created_at, created_at, "t"))
            .unwrap();
    }
    let ids = |after| -> Vec<u128> {
        store.todos_newest_first(after).map(|e| e.unwrap().1.as_u128()).collect()
    };
    assert_eq!(ids(None), vec![1, 3, 2]);
    let (cursor, _, _) = store.todos_newest_first(None).next().unwrap().unwrap();
    assert_eq!(ids(Some(cursor)), vec![3, 2]);
    store.apply(&Key::Todo(Uuid::from_u128(3)), record(999, 1, 1, None)).unwrap();
    assert_eq!(ids(None), vec![1, 2]);
    assert_eq!(store.counts().todos, 2);
}

/// What a crash between the index and record writes can leave behind: entries for a
/// todo that does not exist, and for a live todo at the wrong position. Readers skip both.
#[test]
fn stale_index_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let live = Uuid::from_u128(1);
    store.apply(&Key::Todo(live), todo_record(100, 100, "t")).unwrap();
    for (created_at, id) in [(500u64, live), (400, Uuid::from_u128(2))] {
        let mut entry = created_at.to_be_bytes().to_vec();
        entry.extend_from_slice(id.as_bytes());
        store.inner.engine().unwrap().indexes.todo_order.insert(entry, &[]).unwrap();
    }
    let listed: Vec<Uuid> = store.todos_newest_first(None).map(|e| e.unwrap().1).collect();
    assert_eq!(listed, vec![live]);
}

#[test]
fn doc_paths_by_prefix_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    for path in ["users/a", "users/b", "users/c", "usersx", "other"] {
        store.apply(&doc(path), record(1, 1, 1, Some(b"{}"))).unwrap();
    }
    store.apply(&doc("users/b"), record(2, 1, 1, None)).unwrap();
    assert_eq!(store.counts().docs, 4);
    let paths = |prefix, after| -> Vec<String> {
        store.doc_paths(prefix, after).map(Result::unwrap).collect()
    };
    assert_eq!(paths("users/", None), vec!["users/a", "users/c"]);
    assert_eq!(paths("users/", Some("users/a")), vec!["users/c"]);
    assert_eq!(paths("", None).len(), 4);
}

#[derive(Debug, Clone)]
enum Op {
    Apply(u8, u64, u128, Option<u8>),
    Restart,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..12, 0u64..6, 0u128..3, prop::option::of(0u8..3))
            .prop_map(|(k, ts, uuid, v)| Op::Apply(k, ts, uuid, v)),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The store behaves like a BTreeMap fed through `Record::merge`, across restarts;
    /// its incremental Merkle root always equals one rebuilt from the model's records.
    #[test]
    fn matches_a_btreemap_model_across_restarts(ops in prop::collection::vec(arb_op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 1).unwrap();
        let mut model: BTreeMap<Key, Record> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Apply(k, ts, uuid, value) => {
                    let key = doc(&format!("k{k}"));
                    let value = value.map(|v| vec![b'0' + v]);
                    let incoming = record(ts, 1, uuid, value.as_deref());
                    let should_change = model.get(&key).is_none_or(|current| incoming.supersedes(current));
                    let applied = store.apply(&key, incoming.clone()).unwrap();
                    prop_assert_eq!(applied.changed, should_change);
                    let merged = match model.remove(&key) {
                        Some(current) => Record::merge(current, incoming),
                        None => incoming,
                    };
                    model.insert(key, merged);
                }
                Op::Restart => {
                    store.close().unwrap();
                    drop(store);
                    store = Store::open(dir.path(), 1).unwrap();
                }
            }
            let rebuilt = MerkleTree::from_entries(model.iter().map(|(key, record)| {
                let bytes = key.to_bytes();
                (merkle::segment_of(&bytes), entry_of(&bytes, record))
            }));
            prop_assert_eq!(store.merkle_root(), rebuilt.root());
        }
        for (key, record) in &model {
            let stored = store.get(key).unwrap();
            prop_assert_eq!(stored.as_ref(), Some(record));
        }
        let live = model.values().filter(|r| r.is_live()).count() as u64;
        prop_assert_eq!(store.counts().docs, live);
    }
}

#[test]
fn a_leaf_lists_exactly_its_records_and_children_xor_to_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let keys: Vec<Key> = (0..300).map(|n| doc(&format!("k{n}"))).collect();
    for (n, key) in keys.iter().enumerate() {
        let value = if n % 3 == 0 { None } else { Some(&b"1"[..]) };
        store.apply(key, record(n as u64 + 1, 1, 1, value)).unwrap();
    }
    let mut listed = 0;
    for key in &keys {
        let segment = merkle::segment_of(&key.to_bytes());
        let in_leaf = store.records_in_segment(segment).unwrap();
        assert!(in_leaf.iter().any(|(k, _)| k == key));
        assert!(in_leaf.iter().all(|(k, _)| merkle::segment_of(&k.to_bytes()) == segment));
        listed += 1;
    }
    assert_eq!(listed, 300);
    let children = store.merkle_descendants(0, 0, 1).unwrap();
    let leaves = store.merkle_descendants(0, 0, merkle::DEPTH).unwrap();
    assert_eq!(leaves.len(), merkle::LEAVES);
    let fold = |hashes: &[[u8; 32]]| {
        hashes.iter().fold([0u8; 32], |mut acc, hash| {
            acc.iter_mut().zip(hash).for_each(|(a, h)| *a ^= h);
            acc
        })
    };
    assert_eq!(fold(&leaves), store.merkle_root());
    assert_eq!(fold(&leaves[..merkle::LEAVES / 16]), children[0]);
    assert!(store.merkle_descendants(merkle::DEPTH, 0, 1).is_none());
    assert!(store.merkle_descendants(1, 0, merkle::DEPTH).is_none());
    assert!(store.merkle_descendants(0, 0, 0).is_none());
    assert!(store.merkle_descendants(1, 16, 1).is_none());
}

#[tokio::test]
async fn due_records_are_rewritten_expired_without_moving_the_tree_then_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let expiring =
        |ts, at, value: &[u8]| Record { expires_at: Some(at), ..record(ts, 1, 1, Some(value)) };
    store.apply(&doc("soon"), expiring(10, 1_000, b"1")).unwrap();
    store.apply(&doc("later"), expiring(11, 5_000, b"2")).unwrap();
    store.apply(&doc("never"), record(12, 1, 1, Some(b"3"))).unwrap();
    // Written again without expiry: its old expiry entry is stale, the value must stay.
    store.apply(&doc("renewed"), expiring(13, 900, b"4")).unwrap();
    let renewed = store.apply(&doc("renewed"), record(14, 1, 1, Some(b"5"))).unwrap();
    store.wait_durable(renewed.seq).await.unwrap();
    let root = store.merkle_root();
    let last = store.last_change();

    assert_eq!(store.expire_due(999, 100).unwrap(), 0);
    assert_eq!(store.expire_due(1_000, 100).unwrap(), 1);
    let soon = store.get(&doc("soon")).unwrap().unwrap();
    assert_eq!((soon.is_live(), soon.expires_at), (false, Some(1_000)));
    assert!(store.get(&doc("later")).unwrap().unwrap().is_live());
    assert_eq!(store.get(&doc("renewed")).unwrap().unwrap().live_bytes(), Some(&b"5"[..]));
    assert_eq!(store.merkle_root(), root, "the expired form hashes like the live one");
    assert_eq!(store.counts().docs, 3);
    let engine = store.inner.engine().unwrap();
    assert_eq!(engine.indexes.expiries.len(), 1, "only `later` is still to expire");
    // Watchers see the expiry as a delete (once it is durable, like every change).
    store.wait_durable(store.inner.committer.last_applied()).await.unwrap();
    let changes = store.changes_after(last, usize::MAX).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].key.clone(), changes[0].record.is_live()), (doc("soon"), false));
    // A peer still holding the live form cannot bring the value back.
    assert!(!store.apply(&doc("soon"), expiring(10, 1_000, b"1")).unwrap().changed);
    // The expired form goes with the tombstones, by its write's timestamp.
    assert_eq!(store.purge_tombstones(Timestamp::from_raw(11), 100).unwrap(), 1);
    assert_eq!(store.get(&doc("soon")).unwrap(), None);
    assert_eq!(store.expire_due(u64::MAX, 100).unwrap(), 1);
    assert_eq!(engine.indexes.expiries.len(), 0);
}

#[test]
fn purge_removes_only_expired_tombstones_and_keeps_the_tree_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    store.apply(&doc("live"), record(10, 1, 1, Some(b"1"))).unwrap();
    store.apply(&doc("old-tomb"), record(20, 1, 1, None)).unwrap();
    store.apply(&doc("new-tomb"), record(40, 1, 1, None)).unwrap();
    // Deleted, then written again: its old tombstone entry is stale, the key must stay.
    store.apply(&doc("revived"), record(5, 1, 1, None)).unwrap();
    store.apply(&doc("revived"), record(50, 1, 1, Some(b"2"))).unwrap();

    assert_eq!(store.purge_tombstones(Timestamp::from_raw(30), 100).unwrap(), 1);
    assert_eq!(store.get(&doc("old-tomb")).unwrap(), None);
    assert!(store.get(&doc("new-tomb")).unwrap().is_some());
    assert!(store.get(&doc("revived")).unwrap().unwrap().is_live());
    let remaining: Vec<Key> = ["live", "new-tomb", "revived"].iter().map(|p| doc(p)).collect();
    let rebuilt = MerkleTree::from_entries(remaining.iter().map(|key| {
        let bytes = key.to_bytes();
        (merkle::segment_of(&bytes), entry_of(&bytes, &store.get(key).unwrap().unwrap()))
    }));
    assert_eq!(store.merkle_root(), rebuilt.root());
    assert_eq!(store.inner.engine().unwrap().indexes.tombstones.len(), 1);
    assert_eq!(store.purge_tombstones(Timestamp::from_raw(30), 100).unwrap(), 0);

    // And the rebuilt-at-open tree agrees.
    let root = store.merkle_root();
    store.close().unwrap();
    drop(store);
    assert_eq!(Store::open(dir.path(), 1).unwrap().merkle_root(), root);
}

#[test]
fn remove_if_current_removes_only_the_named_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let key = Key::doc("a").unwrap();
    let first = record(10, 1, 1, Some(b"1"));
    store.apply(&key, first.clone()).unwrap();
    let second = record(20, 1, 2, Some(b"2"));
    store.apply(&key, second.clone()).unwrap();
    assert!(!store.remove_if_current(&key, &first.version).unwrap());
    assert_eq!(store.get(&key).unwrap(), Some(second.clone()));
    assert!(store.remove_if_current(&key, &second.version).unwrap());
    assert_eq!(store.get(&key).unwrap(), None);
    assert_eq!(store.merkle_root(), merkle::ZERO);
    assert_eq!(store.counts(), Counts::default());
    assert_eq!(store.doc_paths("", None).count(), 0);
}

#[test]
fn a_directory_in_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), 1).unwrap();
        store.apply(&doc("a"), record(1, 1, 1, Some(b"1"))).unwrap();
        store.close().unwrap();
    }
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta").unwrap().insert("store_format", &[1u8]).unwrap();
        db.flush().unwrap();
    }
    // sled drops its file lock when its background flusher exits, a moment after the
    // last handle: poll past a lock error instead of racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let error = loop {
        match Store::open(dir.path(), 1) {
            Ok(_) => panic!("format 1 must be refused"),
            Err(error @ StoreError::Format { .. }) => break error.to_string(),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(other) => panic!("opening failed otherwise: {other}"),
        }
    };
    assert!(error.contains("store format 1") && error.contains("format 2"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Scanning many segments at once returns, per segment, exactly the records whose key
    /// falls in it, whatever the set asked for (sorted or not, near or far apart).
    #[test]
    fn a_batched_segment_scan_matches_the_records_of_each_segment(
        keys in proptest::collection::btree_set(0u32..5_000, 0..120),
        asked in proptest::collection::vec(0u16..=u16::MAX, 0..40),
        sort in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let mut by_segment: BTreeMap<u16, Vec<Key>> = BTreeMap::new();
        for n in &keys {
            let key = doc(&format!("k{n}"));
            store.apply(&key, record(u64::from(*n) + 1, 1, 1, Some(b"1"))).unwrap();
            by_segment.entry(merkle::segment_of(&key.to_bytes())).or_default().push(key);
        }
        // Ask for segments that hold records as well as random (mostly empty) ones.
        let mut segments: Vec<u16> = by_segment.keys().step_by(2).copied().chain(asked).collect();
        if sort {
            segments.sort_unstable();
        }
        segments.dedup();
        let found = store.records_in_segments(&segments).unwrap();
        prop_assert_eq!(found.len(), segments.len());
        for (segment, records) in segments.iter().zip(found) {
            let mut got: Vec<Key> = records.into_iter().map(|(key, _)| key).collect();
            let mut want = by_segment.get(segment).cloned().unwrap_or_default();
            got.sort_by_key(|key| key.to_bytes());
            want.sort_by_key(|key| key.to_bytes());
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn a_corrupt_record_key_at_open_is_an_error_naming_it_not_a_panic() {
    for bad_key in [&b""[..], &b"\x01"[..]] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1).unwrap();
            store.inner.engine().unwrap().records.insert(bad_key, b"x".to_vec()).unwrap();
            store.close().unwrap();
        }
        match Store::open(dir.path(), 1) {
            Err(error @ StoreError::CorruptKey { .. }) => {
                assert!(error.to_string().contains("not a valid key"), "{error}")
            }
            Err(other) => panic!("expected CorruptKey, got {other}"),
            Ok(_) => panic!("a store with a {bad_key:?} record key opened"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The change log is a model list: every apply that changed something, numbered from
    /// 1 in order, across restarts; resuming after any number gives exactly the suffix;
    /// and a trim keeps exactly the newest `max_entries`.
    #[test]
    fn the_change_log_resumes_from_any_id_with_exactly_the_suffix(
        ops in prop::collection::vec(arb_op(), 1..60),
        keep in 1u64..10,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 1).unwrap();
        let mut log: Vec<(Key, Record)> = Vec::new();
        for op in ops {
            match op {
                Op::Apply(k, ts, uuid, value) => {
                    let key = doc(&format!("k{k}"));
                    let value = value.map(|v| vec![b'0' + v]);
                    let applied = store.apply(&key, record(ts, 1, uuid, value.as_deref())).unwrap();
                    runtime.block_on(store.wait_durable(applied.seq)).unwrap();
                    if applied.changed {
                        log.push((key, applied.record));
                    }
                }
                Op::Restart => {
                    store.close().unwrap();
                    drop(store);
                    store = Store::open(dir.path(), 1).unwrap();
                }
            }
        }
        prop_assert_eq!(store.last_change(), log.len() as u64);
        for after in 0..=log.len() {
            let suffix = store.changes_after(after as u64, usize::MAX).unwrap();
            prop_assert_eq!(suffix.len(), log.len() - after);
            for (change, (n, (key, record))) in suffix.iter().zip(log.iter().enumerate().skip(after)) {
                prop_assert_eq!(change.id, n as u64 + 1);
                prop_assert_eq!(&change.key, key);
                prop_assert_eq!(&change.record, record);
            }
        }
        store.set_change_limits(ChangeLimits { max_entries: keep, max_age_ms: u64::MAX });
        store.trim_changes(0, usize::MAX).unwrap();
        let kept = (log.len() as u64).min(keep);
        let oldest = store.oldest_change().unwrap();
        prop_assert_eq!(oldest, (kept > 0).then(|| log.len() as u64 - kept + 1));
        let after = log.len() as u64 - kept;
        prop_assert_eq!(store.changes_after(after, usize::MAX).unwrap().len() as u64, kept);
    }
}

#[tokio::test]
async fn durable_changes_are_published_live_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let mut live = store.subscribe_changes();
    for n in 0..5u64 {
        let applied =
            store.apply(&doc(&format!("k{n}")), record(10 + n, 1, 1, Some(b"1"))).unwrap();
        store.wait_durable(applied.seq).await.unwrap();
    }
    let mut received = Vec::new();
    while received.len() < 5 {
        received.extend(live.recv().await.unwrap().iter().cloned());
    }
    for (n, change) in (1..=5u64).zip(&received) {
        assert_eq!(change.id, n);
        assert_eq!(change.key, doc(&format!("k{}", n - 1)));
    }
    // A live record removed outright is published as a delete of its version.
    let current = store.get(&doc("k0")).unwrap().unwrap();
    assert!(store.remove_if_current(&doc("k0"), &current.version).unwrap());
    let removed = tokio::time::timeout(std::time::Duration::from_secs(5), live.recv()).await;
    let removed = removed.unwrap().unwrap()[0].clone();
    assert_eq!((removed.id, removed.record.is_live()), (6, false));
    assert_eq!(removed.record.version, current.version);
}

#[test]
fn the_numbering_survives_a_restart_after_every_change_aged_out() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    let mut last = 0;
    for n in 0..5u64 {
        last = store.apply(&doc(&format!("k{n}")), record(n + 1, 1, 1, Some(b"1"))).unwrap().seq;
    }
    runtime.block_on(store.wait_durable(last)).unwrap();
    store.set_change_limits(ChangeLimits { max_entries: 100, max_age_ms: 0 });
    assert_eq!(store.trim_changes(u64::MAX, usize::MAX).unwrap(), 4);
    assert_eq!(store.oldest_change().unwrap(), Some(5));
    store.close().unwrap();
    drop(store);

    // A watcher that saw change 5 must not be handed a new change 1 after the restart.
    let store = Store::open(dir.path(), 1).unwrap();
    assert_eq!(store.last_change(), 5);
    let applied = store.apply(&doc("after"), record(10, 1, 1, Some(b"1"))).unwrap();
    runtime.block_on(store.wait_durable(applied.seq)).unwrap();
    let next = store.changes_after(5, usize::MAX).unwrap();
    assert_eq!(
        next.iter().map(|change| (change.id, change.key.clone())).collect::<Vec<_>>(),
        vec![(6, doc("after"))]
    );
}
