//! In-memory backend: a `BTreeMap` under a mutex. Nothing survives the process; used by
//! tests and simulations, and as the reference the durable backends are checked against.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::StoreError;
use super::kv::{Batch, Entries, KvBackend, display_key};

/// Ordered map held in memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    // A std mutex: critical sections are short and never await.
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic elsewhere while holding the lock cannot leave a half-applied batch (the
        // batch is checked before any change), so the map is still consistent.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KvBackend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        Ok(self
            .lock()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.lock();
        if let Some(key) = batch.require_absent.iter().find(|k| map.contains_key(*k)) {
            return Err(StoreError::Conflict {
                key: display_key(key),
            });
        }
        for key in &batch.deletes {
            map.remove(key);
        }
        map.extend(batch.puts);
        Ok(())
    }
}
