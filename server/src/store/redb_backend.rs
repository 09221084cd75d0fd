//! redb backend, the durable default: one table of `&[u8] -> &[u8]` in the single file
//! `<data_dir>/fedval.redb`.
//!
//! redb is ACID with copy-on-write B-trees; every batch is one write transaction committed
//! with `Durability::Immediate`, i.e. fsynced before `commit` returns, and a crash at any
//! point leaves either the previous or the new state. Write transactions are serialised by
//! redb itself, so the `require_absent` check and the writes cannot interleave with another
//! batch.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::StoreError;
use super::kv::{Batch, Entries, KvBackend, display_key};

/// The one table holding every key.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("fedval");

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "fedval.redb";

/// A redb database file.
pub struct RedbBackend {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend")
            .field("path", &self.path)
            .finish()
    }
}

/// Wraps a redb error with what was being done.
fn err<E>(context: impl Into<String>) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let context = context.into();
    move |source| StoreError::Backend {
        backend: "redb",
        context,
        source: Box::new(source),
    }
}

impl RedbBackend {
    /// Opens (or creates, with its directory) `<dir>/fedval.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let opening = format!("opening {}", path.display());
        std::fs::create_dir_all(dir)
            .map_err(err(format!("creating data directory {}", dir.display())))?;
        let db = Database::create(&path).map_err(err(opening.clone()))?;
        // Create the table once so that readers never meet a missing table.
        let txn = db.begin_write().map_err(err(opening.clone()))?;
        txn.open_table(TABLE).map_err(err(opening.clone()))?;
        txn.commit().map_err(err(opening))?;
        Ok(Self { db, path })
    }
}

impl KvBackend for RedbBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(err("reading"))?;
        let table = txn.open_table(TABLE).map_err(err("reading"))?;
        let value = table.get(key).map_err(err("reading"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let txn = self.db.begin_read().map_err(err("scanning"))?;
        let table = txn.open_table(TABLE).map_err(err("scanning"))?;
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(prefix..).map_err(err("scanning"))? {
            let (k, v) = entry.map_err(err("scanning"))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(err("committing"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(err("committing"))?;
        {
            let mut table = txn.open_table(TABLE).map_err(err("committing"))?;
            for key in &batch.require_absent {
                if table
                    .get(key.as_slice())
                    .map_err(err("committing"))?
                    .is_some()
                {
                    drop(table);
                    txn.abort().map_err(err("aborting"))?;
                    return Err(StoreError::Conflict {
                        key: display_key(key),
                    });
                }
            }
            for key in &batch.deletes {
                table.remove(key.as_slice()).map_err(err("committing"))?;
            }
            for (key, value) in &batch.puts {
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(err("committing"))?;
            }
        }
        txn.commit().map_err(err("committing"))
    }
}
