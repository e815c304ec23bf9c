use std::time::Duration;

use uuid::Uuid;

use super::{check_ttl, IfMatch, ServiceError, Writer};
use crate::model::todo::{self, StoredTodo};
use crate::model::{Key, Record, Value, Version};
use crate::store::TodoCursor;

/// A create request, already parsed from JSON.
#[derive(Debug, Clone, Default)]
pub struct NewTodo {
    pub extern_id: Option<String>,
    pub todo: String,
    pub completed: Option<bool>,
    /// Expire this long after the write; `None`: never.
    pub expires_in: Option<Duration>,
}

/// A partial update; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct TodoPatch {
    pub todo: Option<String>,
    pub completed: Option<bool>,
    /// `None`: the expiry stays; `Some(None)`: the todo no longer expires;
    /// `Some(Some(ttl))`: it expires `ttl` after this write.
    pub expires_in: Option<Option<Duration>>,
}

/// A live todo with its id, version and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoView {
    pub id: Uuid,
    pub todo: StoredTodo,
    pub version: Version,
    /// When it stops being readable (ms since the epoch), if ever.
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct TodoQuery {
    pub completed: Option<bool>,
    pub extern_id: Option<String>,
    pub limit: usize,
    pub after: Option<TodoCursor>,
}

#[derive(Debug, Clone, Default)]
pub struct TodoPage {
    pub items: Vec<TodoView>,
    /// Where the next page starts, if there is one.
    pub next: Option<TodoCursor>,
}

#[derive(Clone)]
pub struct TodoService {
    writer: Writer,
}

impl TodoService {
    pub(super) fn new(writer: Writer) -> Self {
        TodoService { writer }
    }

    /// Creates a todo. Its id derives from `extern_id` (generated when absent), so the
    /// same `extern_id` created on two nodes converges to one todo. A live todo with
    /// that `extern_id` is a conflict; a deleted one is replaced.
    pub async fn create(&self, new: NewTodo) -> Result<TodoView, ServiceError> {
        todo::validate_text(&new.todo)?;
        let extern_id = new.extern_id.unwrap_or_else(|| Uuid::new_v4().to_string());
        todo::validate_extern_id(&extern_id)?;
        if let Some(ttl) = new.expires_in {
            check_ttl("expires_in", ttl)?;
        }
        let id = todo::todo_id(&extern_id);
        let applied = self.writer.store.apply_with(&Key::Todo(id), |current| {
            if self.writer.visible(current).is_some() {
                return Err(ServiceError::Conflict(format!(
                    "a todo with extern_id {extern_id:?} already exists (id {id})"
                )));
            }
            let version = self.writer.next_version(current)?;
            let now = version.ts.raw();
            let stored = StoredTodo {
                extern_id: extern_id.clone(),
                todo: new.todo,
                completed: new.completed.unwrap_or(false),
                created_at: now,
                updated_at: now,
            };
            let expires_at = new.expires_in.map(|ttl| Writer::expiry(&version, ttl));
            Ok(Record { version, value: Value::Live(stored.encode()), expires_at })
        })?;
        self.writer.commit(&Key::Todo(id), &applied).await?;
        view(id, applied.record).ok_or(ServiceError::NotFound)
    }

    pub fn get(&self, id: Uuid) -> Result<Option<TodoView>, ServiceError> {
        let record = self.writer.store.get(&Key::Todo(id))?;
        Ok(self.writer.visible(record.as_ref()).and_then(|record| view(id, record.clone())))
    }

    /// One page of live todos, newest first.
    pub fn list(&self, query: &TodoQuery) -> Result<TodoPage, ServiceError> {
        let matches = |view: &TodoView| query.completed.is_none_or(|c| view.todo.completed == c);
        if let Some(extern_id) = &query.extern_id {
            let found = self.get(todo::todo_id(extern_id))?.filter(matches);
            return Ok(TodoPage { items: found.into_iter().collect(), next: None });
        }
        let mut page = TodoPage::default();
        let mut last_cursor = None;
        for entry in self.writer.store.todos_newest_first(query.after) {
            let (cursor, id, record) = entry?;
            if self.writer.visible(Some(&record)).is_none() {
                continue;
            }
            let Some(view) = view(id, record) else { continue };
            if !matches(&view) {
                continue;
            }
            if page.items.len() == query.limit {
                page.next = last_cursor;
                break;
            }
            page.items.push(view);
            last_cursor = Some(cursor);
        }
        Ok(page)
    }

    /// Applies a partial update; `extern_id` and `created_at` never change.
    pub async fn update(
        &self,
        id: Uuid,
        patch: TodoPatch,
        if_match: Option<&IfMatch>,
    ) -> Result<TodoView, ServiceError> {
        if let Some(text) = &patch.todo {
            todo::validate_text(text)?;
        }
        if let Some(Some(ttl)) = patch.expires_in {
            check_ttl("expires_in", ttl)?;
        }
        let applied = self.writer.store.apply_with(&Key::Todo(id), |current| {
            let (current, mut stored) = current_todo(id, self.writer.visible(current), if_match)?;
            let version = self.writer.next_version(Some(current))?;
            debug_assert!(version > current.version);
            if let Some(text) = patch.todo {
                stored.todo = text;
            }
            if let Some(completed) = patch.completed {
                stored.completed = completed;
            }
            stored.updated_at = version.ts.raw();
            let expires_at = match patch.expires_in {
                None => current.expires_at,
                Some(ttl) => ttl.map(|ttl| Writer::expiry(&version, ttl)),
            };
            Ok(Record { version, value: Value::Live(stored.encode()), expires_at })
        })?;
        self.writer.commit(&Key::Todo(id), &applied).await?;
        view(id, applied.record).ok_or(ServiceError::NotFound)
    }

    /// Deletes a todo by writing a tombstone.
    pub async fn delete(&self, id: Uuid, if_match: Option<&IfMatch>) -> Result<(), ServiceError> {
        let applied = self.writer.store.apply_with(&Key::Todo(id), |current| {
            let (visible, _) = current_todo(id, self.writer.visible(current), if_match)?;
            Ok(Record::new(self.writer.next_version(Some(visible))?, Value::Tombstone))
        })?;
        self.writer.commit(&Key::Todo(id), &applied).await
    }
}

/// The visible todo a modification applies to, after its precondition.
fn current_todo<'a>(
    id: Uuid,
    visible: Option<&'a Record>,
    if_match: Option<&IfMatch>,
) -> Result<(&'a Record, StoredTodo), ServiceError> {
    let current = visible.ok_or(ServiceError::NotFound)?;
    if if_match.is_some_and(|condition| !condition.allows(&current.version)) {
        return Err(ServiceError::PreconditionFailed);
    }
    let bytes = current.live_bytes().unwrap_or_default();
    // Stored todos were validated on the way in; a failure here means a corrupt store.
    let stored = StoredTodo::decode(bytes).map_err(|reason| {
        ServiceError::Store(crate::store::StoreError::InvalidTodo {
            key: Key::Todo(id).to_string(),
            reason,
        })
    })?;
    Ok((current, stored))
}

pub(super) fn view(id: Uuid, record: Record) -> Option<TodoView> {
    let todo = StoredTodo::decode(record.live_bytes()?).ok()?;
    Some(TodoView { id, todo, version: record.version, expires_at: record.expires_at })
}
