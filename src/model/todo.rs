//! The stored shape of a todo and the rules every todo obeys, wherever it was written.

use serde::{Deserialize, Serialize};
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
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

pub fn validate_text(text: &str) -> Result<(), FieldError> {
    check_length("todo", text, MAX_TODO_CHARS)
}

pub fn validate_extern_id(extern_id: &str) -> Result<(), FieldError> {
    check_length("extern_id", extern_id, MAX_EXTERN_ID_CHARS)
}

impl StoredTodo {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings, bools and integers serializes")
    }

    /// Decodes and validates a stored todo (a peer may send anything).
    pub fn decode(bytes: &[u8]) -> Result<StoredTodo, String> {
        let todo: StoredTodo = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        validate_text(&todo.todo).map_err(|e| e.to_string())?;
        validate_extern_id(&todo.extern_id).map_err(|e| e.to_string())?;
        Ok(todo)
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
        let empty = StoredTodo { todo: String::new(), ..good };
        assert!(StoredTodo::decode(&empty.encode()).is_err());
        assert!(StoredTodo::decode(b"{}").is_err());
    }
}
