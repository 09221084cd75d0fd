//! The key-value layer under the [`Store`](super::Store): ordered byte keys, atomic and
//! durable batches.
//!
//! A backend needs only three operations: point reads, ordered prefix scans and
//! [`KvBackend::commit`] of a [`Batch`]. A batch is all-or-nothing and durable (on disk,
//! fsynced) when `commit` returns; its `require_absent` keys make "insert unless it exists"
//! atomic, which is how duplicate uploads and double round commits are refused without a
//! lock above the store. Every domain rule lives once, in `Store`, on top of this trait.

use super::StoreError;

/// Writes applied together: all of them, or (on any error) none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Keys to write with their values (applied after `deletes`).
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys to remove (absent keys are ignored).
    pub deletes: Vec<Vec<u8>>,
    /// Keys that must not exist before the batch; if one does, the batch fails with
    /// [`StoreError::Conflict`] and nothing is written.
    pub require_absent: Vec<Vec<u8>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write of `value` at `key`.
    pub fn put(mut self, key: Vec<u8>, value: Vec<u8>) -> Self {
        self.puts.push((key, value));
        self
    }

    /// Adds a write of `value` at `key` that fails the batch if `key` already exists.
    pub fn insert_new(mut self, key: Vec<u8>, value: Vec<u8>) -> Self {
        self.require_absent.push(key.clone());
        self.puts.push((key, value));
        self
    }

    /// Adds a removal of `key`.
    pub fn delete(mut self, key: Vec<u8>) -> Self {
        self.deletes.push(key);
        self
    }
}

/// Key-value pairs, as returned by a prefix scan.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered, durable key-value store (redb, sled, or memory for tests).
pub trait KvBackend: Send + Sync + 'static {
    /// The value at `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every entry whose key starts with `prefix`, in ascending byte order of keys.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError>;

    /// Applies `batch` atomically: checks `require_absent`, then removes `deletes`, then
    /// writes `puts`. Returns only once the batch is durable.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
}

/// Human-readable form of a key for error messages (non-printable bytes escaped).
pub fn display_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}
