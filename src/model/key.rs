use std::fmt;
use uuid::Uuid;

/// Longest raw-document path accepted (SPEC §3: "UTF-8 paths up to 1 KiB").
pub const MAX_DOC_PATH_BYTES: usize = 1024;

const TODO_PREFIX: &str = "todo/";
const DOC_PREFIX: &str = "kv/";
/// First byte of a todo key's byte form (then the 16 id bytes). No document key starts
/// with it: theirs start with `kv/`.
const TODO_TAG: u8 = 0x01;
const TODO_KEY_BYTES: usize = 17;

/// A record key. It can only be built by parsing or from a typed id, so every key the
/// store or a peer sees has already been validated.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Key {
    /// A todo, by its cluster-wide id.
    Todo(Uuid),
    /// A raw JSON document, by its path (`users/john/profile`).
    Doc(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key must not be empty")]
    Empty,
    #[error("key is {0} bytes, the limit is {MAX_DOC_PATH_BYTES}")]
    TooLong(usize),
    #[error("key must not contain control characters")]
    ControlCharacter,
    #[error("key is not valid UTF-8")]
    NotUtf8,
    #[error("todo key does not hold a UUID")]
    BadTodoId,
    #[error("key has no known collection prefix")]
    UnknownCollection,
}

impl Key {
    /// Validates a raw-document path as given by a client.
    pub fn doc(path: &str) -> Result<Key, KeyError> {
        if path.is_empty() {
            return Err(KeyError::Empty);
        }
        if path.len() > MAX_DOC_PATH_BYTES {
            return Err(KeyError::TooLong(path.len()));
        }
        if path.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        Ok(Key::Doc(path.to_owned()))
    }

    /// The byte form used on disk and on the wire: a todo is its tag byte and the 16
    /// bytes of its id (17 bytes, where the text form takes 41); a document is
    /// `kv/<path>`.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Key::Todo(id) => {
                let mut bytes = Vec::with_capacity(TODO_KEY_BYTES);
                bytes.push(TODO_TAG);
                bytes.extend_from_slice(id.as_bytes());
                bytes
            }
            Key::Doc(path) => format!("{DOC_PREFIX}{path}").into_bytes(),
        }
    }

    /// True when `bytes` is the byte form of a todo key (a cheap test for counting).
    pub fn is_todo_bytes(bytes: &[u8]) -> bool {
        bytes.first() == Some(&TODO_TAG)
    }

    /// Parses the byte form, with every check a client-supplied key gets.
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, KeyError> {
        if Key::is_todo_bytes(bytes) {
            let id: [u8; 16] = bytes[1..].try_into().map_err(|_| KeyError::BadTodoId)?;
            return Ok(Key::Todo(Uuid::from_bytes(id)));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)?;
        if let Some(path) = text.strip_prefix(DOC_PREFIX) {
            Key::doc(path)
        } else {
            Err(KeyError::UnknownCollection)
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Todo(id) => write!(f, "{TODO_PREFIX}{}", id.hyphenated()),
            Key::Doc(path) => write!(f, "{DOC_PREFIX}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(Key::doc(""), Err(KeyError::Empty));
        assert_eq!(Key::doc(&"a".repeat(1025)), Err(KeyError::TooLong(1025)));
        assert_eq!(Key::doc("a\nb"), Err(KeyError::ControlCharacter));
        assert!(Key::doc(&"é".repeat(512)).is_ok());
    }

    #[test]
    fn rejects_bad_bytes() {
        assert_eq!(Key::from_bytes(b"\x01nope"), Err(KeyError::BadTodoId));
        assert_eq!(Key::from_bytes(&[1; 18]), Err(KeyError::BadTodoId));
        assert_eq!(Key::from_bytes(b"todo/1"), Err(KeyError::UnknownCollection));
        assert_eq!(Key::from_bytes(b"other/x"), Err(KeyError::UnknownCollection));
        assert_eq!(Key::from_bytes(&[0xff, 0xfe]), Err(KeyError::NotUtf8));
    }

    proptest! {
        #[test]
        fn doc_keys_round_trip(path in "[^\\p{Cc}]{1,200}") {
            let key = Key::doc(&path).unwrap();
            prop_assert_eq!(Key::from_bytes(&key.to_bytes()).unwrap(), key);
        }

        #[test]
        fn todo_keys_round_trip(id in any::<u128>()) {
            let key = Key::Todo(Uuid::from_u128(id));
            prop_assert_eq!(Key::from_bytes(&key.to_bytes()).unwrap(), key);
        }
    }
}
