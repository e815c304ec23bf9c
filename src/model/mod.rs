//! Plain data types with no IO: keys, versions and their order, records and their
//! merge, the stored shape of a todo, and node identity.
//!
//! Everything above this module agrees on one conflict rule, [`Record::supersedes`].

pub mod json;
mod key;
mod node;
mod record;
pub mod todo;
mod version;

pub use key::{Key, KeyError, MAX_DOC_PATH_BYTES};
pub use node::{NodeId, Origin};
pub use record::{Record, Value};
pub use version::{Timestamp, Version};
