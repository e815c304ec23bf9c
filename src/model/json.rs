//! Strict JSON for documents: the one validator for client bodies (`PUT /kv/…`) and for
//! records arriving from peers, so a peer cannot store what a client may not.
//!
//! Accepted: RFC 8259 JSON with valid UTF-8 and escapes (no lone surrogates), finite
//! numbers, at most [`MAX_DEPTH`] nested arrays and objects, and no object with the
//! same key twice.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// How deeply arrays and objects may nest.
pub const MAX_DEPTH: usize = 64;

/// Why a document is not strict JSON (serde_json's message, with line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

/// Checks that `bytes` is one strict JSON value.
pub fn check_document(bytes: &[u8]) -> Result<(), JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Strict { depth: 0 }.deserialize(&mut deserializer).map_err(|e| JsonError(e.to_string()))?;
    deserializer.end().map_err(|e| JsonError(e.to_string()))
}

/// Visits one value at `depth`, refusing what [`check_document`] refuses.
#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
}

impl Strict {
    fn deeper<E: de::Error>(self) -> Result<Strict, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Strict { depth: self.depth + 1 })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format_args!("key {key:?} appears twice")));
            }
            keys.insert(key);
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_documents_pass() {
        for ok in [
            &br#"{"a":1,"b":[true,null,"x",-2.5e10],"c":{"d":"\u00e9\ud83d\ude00"}}"#[..],
            b"[]",
            b" 3 ",
            "\"caf\u{e9}\"".as_bytes(),
            b"1e308",
        ] {
            assert_eq!(check_document(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn what_lax_parsers_store_is_refused() {
        let deep_ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(check_document(deep_ok.as_bytes()), Ok(()));
        let too_deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let very_deep = "[".repeat(400_000) + &"]".repeat(400_000);
        let refused: Vec<Vec<u8>> = vec![
            b"\"\xff\xfe\"".to_vec(), // invalid UTF-8 in a string
            br#""\ud800""#.to_vec(),  // a lone surrogate
            br#""\x41""#.to_vec(),    // an invalid escape
            b"1e999".to_vec(),        // not finite
            b"-1e999".to_vec(),
            br#"{"a":1,"a":2}"#.to_vec(), // a duplicate key
            br#"{"a":{"b":1,"b":1}}"#.to_vec(),
            br#"{"\u0061":1,"a":2}"#.to_vec(), // the same key, escaped
            too_deep.into_bytes(),
            very_deep.into_bytes(),
            b"{} {}".to_vec(), // two values
            b"NaN".to_vec(),
            b"".to_vec(),
        ];
        for bad in refused {
            let shown = String::from_utf8_lossy(&bad[..bad.len().min(40)]).into_owned();
            assert!(check_document(&bad).is_err(), "accepted {shown}");
        }
    }

    proptest! {
        /// Whatever serde_json writes from a value tree is accepted (serde_json's maps
        /// never repeat a key), and arbitrary bytes never panic.
        #[test]
        fn what_serde_json_writes_passes(value in arbitrary_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            prop_assert_eq!(check_document(&bytes), Ok(()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = check_document(&bytes);
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
