//! sled backend (cargo feature `sled`): one sled tree under `<data_dir>/sled/`.
//!
//! Supported because the original specification named sled; redb is the default because
//! sled 0.34 is unmaintained since 2021 and its README calls it beta. Durability model:
//! sled writes go to an in-memory page cache and a log that a background thread flushes
//! periodically, so a plain write is NOT durable when it returns. Each batch therefore runs
//! as one sled transaction on the tree (atomic: all writes or none, `require_absent` checked
//! inside it) and is followed by `flush()`, which writes and fsyncs the log before `commit`
//! returns. After a crash sled recovers to a prefix of the flushed log, so an acknowledged
//! batch survives and no batch is half applied.

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::StoreError;
use super::kv::{Batch, Entries, KvBackend, display_key};

/// Directory of the sled database inside the data directory.
pub const DIR_NAME: &str = "sled";

/// Name of the one tree holding every key.
const TREE: &str = "fedval";

/// A sled database directory.
pub struct SledBackend {
    // Kept so the database outlives the tree handle explicitly.
    _db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend")
            .field("path", &self.path)
            .finish()
    }
}

fn err(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Backend {
        backend: "sled",
        context,
        source: Box::new(source),
    }
}

impl SledBackend {
    /// Opens (or creates) `<dir>/sled/`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DIR_NAME);
        let opening = format!("opening {}", path.display());
        let db = sled::open(&path).map_err(err(opening.clone()))?;
        let tree = db.open_tree(TREE).map_err(err(opening))?;
        Ok(Self {
            _db: db,
            tree,
            path,
        })
    }
}

impl KvBackend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree.get(key).map_err(err("reading"))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(err("scanning"))
            })
            .collect()
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // The closure may run more than once (sled retries on internal conflicts), so it
        // only borrows the batch.
        let outcome = self.tree.transaction(|tx| {
            for key in &batch.require_absent {
                if tx.get(key.as_slice())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(display_key(key)));
                }
            }
            for key in &batch.deletes {
                tx.remove(key.as_slice())?;
            }
            for (key, value) in &batch.puts {
                tx.insert(key.as_slice(), value.as_slice())?;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(key)) => return Err(StoreError::Conflict { key }),
            Err(TransactionError::Storage(e)) => return Err(err("committing")(e)),
        }
        self.tree.flush().map_err(err("flushing"))?;
        Ok(())
    }
}
