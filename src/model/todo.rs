//! The stored shape of a todo and the rules every todo obeys, wherever it was written.

use uuid::Uuid;

pub const MAX_TODO_CHARS: usize = 500;
pub const MAX_EXTERN_ID_CHARS: usize = 80;

/// The namespace of todo ids: `id = UUIDv5(TODO_NAMESPACE, extern_id)`, so the same
/// `extern_id` created on two nodes names one todo. Never change it.
pub const TODO_NAMESPACE: Uuid = Uuid::from_u128(0x6b76_732d_746f_646f_8000_4b56_5354_4f44);

pub fn todo_id(extern_id: &str) -> Uuid {
    Uuid::new_v5(&TODO_NAMESPACE, extern_id.as_bytes())
}

/// A todo as it is stored in a record value. The id lives in the key and the version in
/// the record. `created_at` and `updated_at` are raw HLC timestamps (see
/// [`crate::model::Timestamp`]) of the creating and the latest write: unlike plain
/// milliseconds they never tie between two writes of one node, so "newest first" is exact.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredTodo {
    pub extern_id: String,
    pub todo: String,
    pub completed: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A field that broke a rule, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn check_length(field: &'static str, text: &str, max: usize) -> Result<(), FieldError> {
    let chars = text.chars().count();
    if chars == 0 || chars > max {
        return Err(FieldError {
            field,
            message: format!("must be 1 to {max} characters, got {chars}"),
        });
    }
    Ok(())
}

/// 1 to [`MAX_TODO_CHARS`] characters, no control characters but newline and tab (NUL
/// or a terminal escape sequence in a todo would reach whoever prints it).
pub fn validate_text(text: &str) -> Result<(), FieldError> {
    check_length("todo", text, MAX_TODO_CHARS)?;
    if let Some(bad) = text.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t') {
        return Err(FieldError {
            field: "todo",
            message: format!("must not contain control character U+{:04X}", u32::from(bad)),
        });
    }
    Ok(())
}

pub fn validate_extern_id(extern_id: &str) -> Result<(), FieldError> {
    check_length("extern_id", extern_id, MAX_EXTERN_ID_CHARS)
}

/// First byte of an encoded [`StoredTodo`]; bump when the layout changes.
pub const TODO_FORMAT: u8 = 1;

impl StoredTodo {
    /// The stored form, about half the size of the JSON: format byte, flags (bit 0:
    /// completed), `created_at` and `updated_at` (8 bytes each, big-endian), then
    /// `extern_id` and `todo` as UTF-8, each after a 2-byte length.
    /// The rules a client's todo obeys, checked on a todo from a peer stored under `id`:
    /// field limits, and `id = UUIDv5(extern_id)` (else two live todos could share one
    /// `extern_id`).
    pub fn check(&self, id: Uuid) -> Result<(), FieldError> {
        validate_text(&self.todo)?;
        validate_extern_id(&self.extern_id)?;
        if todo_id(&self.extern_id) != id {
            return Err(FieldError {
                field: "id",
                message: format!("{id} is not the id of extern_id {:?}", self.extern_id),
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(22 + self.extern_id.len() + self.todo.len());
        out.push(TODO_FORMAT);
        out.push(u8::from(self.completed));
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out.extend_from_slice(&self.updated_at.to_be_bytes());
        for text in [&self.extern_id, &self.todo] {
            let len = u16::try_from(text.len()).expect("validated texts are under 64 KiB");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// Decodes and validates a stored todo (a peer may send anything).
    pub fn decode(bytes: &[u8]) -> Result<StoredTodo, String> {
        let mut rest = bytes;
        let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(format!("stored todo ends before its {what}"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let format = take(1, "format byte")?[0];
        if format != TODO_FORMAT {
            return Err(format!("stored todo format {format} is unknown (expected {TODO_FORMAT})"));
        }
        let completed = match take(1, "flags")?[0] {
            0 => false,
            1 => true,
            other => return Err(format!("stored todo flags {other:#04x} are unknown")),
        };
        let u64_of = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
        let created_at = u64_of(take(8, "created_at")?);
        let updated_at = u64_of(take(8, "updated_at")?);
        let mut text = |what: &str| -> Result<String, String> {
            let len = take(2, what)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            String::from_utf8(take(len, what)?.to_vec())
                .map_err(|_| format!("stored todo {what} is not UTF-8"))
        };
        let extern_id = text("extern_id")?;
        let todo = text("todo")?;
        if !rest.is_empty() {
            return Err(format!("stored todo has {} trailing bytes", rest.len()));
        }
        validate_text(&todo).map_err(|e| e.to_string())?;
        validate_extern_id(&extern_id).map_err(|e| e.to_string())?;
        Ok(StoredTodo { extern_id, todo, completed, created_at, updated_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_deterministic_per_extern_id() {
        assert_eq!(todo_id("a"), todo_id("a"));
        assert_ne!(todo_id("a"), todo_id("b"));
        assert_eq!(todo_id("a").get_version_num(), 5);
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert!(validate_text(&"é".repeat(500)).is_ok());
        assert!(validate_text(&"é".repeat(501)).is_err());
        assert!(validate_text("").is_err());
        assert!(validate_extern_id(&"x".repeat(80)).is_ok());
        assert_eq!(validate_extern_id(&"x".repeat(81)).unwrap_err().field, "extern_id");
    }

    #[test]
    fn decode_rejects_invalid_todos() {
        let good = StoredTodo {
            extern_id: "e".into(),
            todo: "t".into(),
            completed: false,
            created_at: 1,
            updated_at: 2,
        };
        assert_eq!(StoredTodo::decode(&good.encode()).unwrap(), good);
        let empty = StoredTodo { todo: String::new(), ..good.clone() };
        assert!(StoredTodo::decode(&empty.encode()).is_err());
        assert!(StoredTodo::decode(b"{}").is_err());
        let mut trailing = good.encode();
        trailing.push(0);
        assert!(StoredTodo::decode(&trailing).unwrap_err().contains("trailing"));
        let mut flags = good.encode();
        flags[1] = 2;
        assert!(StoredTodo::decode(&flags).unwrap_err().contains("flags"));
    }

    proptest::proptest! {
        #[test]
        fn encoding_round_trips(
            extern_id in "\\PC{1,80}",
            todo in "\\PC{1,500}",
            completed: bool,
            created_at: u64,
            updated_at: u64,
        ) {
            let stored = StoredTodo { extern_id, todo, completed, created_at, updated_at };
            proptest::prop_assert_eq!(StoredTodo::decode(&stored.encode()).unwrap(), stored);
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in proptest::collection::vec(0u8..=255, 0..120)) {
            let _ = StoredTodo::decode(&bytes);
        }
    }
}
