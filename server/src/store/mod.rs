//! Durable state of the coordinator: federations, clients, updates, models and rounds.
//!
//! Two layers. [`kv`] is a minimal ordered key-value interface with atomic, durable
//! batches, implemented by [`memory`] (tests), [`redb_backend`] (the default) and
//! `sled_backend` (feature `sled`). [`Store`] is the domain API on top; it is written once
//! against [`KvBackend`], so every backend shares the same domain code and passes the same
//! conformance suite.
//!
//! **Invariant:** every `Store` write is one batch, durable (fsynced) when the call returns.
//! An update is therefore acknowledged only once it is on disk, and a round's record, its
//! new model and the federation's progress are committed together or not at all: a
//! restarted server resumes from the last committed round with nothing acknowledged lost.
//!
//! # Key scheme
//! Keys are ASCII paths; string components are escaped (`%` -> `%25`, `/` -> `%2F`) so no
//! component can contain the separator, and numbers are 20-digit zero-padded decimals so
//! byte order is numeric order and prefix scans come out sorted:
//!
//! | key                                         | value                           |
//! |---------------------------------------------|---------------------------------|
//! | `fed/<federation>`                          | [`FederationRecord`] (JSON)     |
//! | `client/<federation>/<seq>`                 | [`ClientRecord`] (JSON)         |
//! | `client-name/<federation>/<name>`           | client id (uniqueness index)    |
//! | `update/<federation>/<round>/<client_id>`   | [`UpdateRecord`] (JSON)         |
//! | `delta/<federation>/<round>/<client_id>`    | update tensor (LE f32 bytes)    |
//! | `model/<federation>/<version>`              | global model (LE f32 bytes)     |
//! | `round/<federation>/<round>`                | [`RoundRecord`] (JSON)          |
//! | `cmodel/<federation>/<client_id>/<version>` | a client's own model (policies) |
//! | `vembed/<federation>/<round>/<client_id>`   | vertical: a party's embeddings  |
//! | `vgrad/<federation>/<round>`                | vertical: the round's gradients |
//! | `vstep/<federation>/<seq>`                  | async vertical: [`VerticalStepRecord`] (JSON) |
//! | `vsnap/<federation>/<round>`                | async vertical: embedding table snapshot |
//! | `ledger/<federation>/<round>/<client_id>/<kind>` | [`LedgerEntry`] (JSON), written once |
//! | `bstep/<federation>/<step>`                 | bandit: [`BanditStepRecord`] (JSON), the step log |
//! | `bprog/<federation>`                        | bandit: the last logged step    |
//! | `breport/<federation>/<round>/<client_id>`  | bandit: cost + Gram update (LE f64) |
//! | `bupload/<federation>/<round>/<client_id>`  | bandit: reward vector `db` (LE f64) |
//! | `bsync/<federation>/<client_id>`            | bandit: last round downloaded   |
//! | `bagg/<federation>`                         | bandit: aggregate `[V_g, b_g]` (LE f64) |
//!
//! In a vertical federation the "model" of version `t` is the server's bias after round
//! `t`, and the round after the last step holds the embeddings of the evaluation pass.
//! In asynchronous training every party step is appended to the step log (`seq` counts
//! steps over all parties from 1) and round `r` is snapshot `r` of the whole table
//! (parties in enrollment order, each `N x C` row-major LE f32), committed together with
//! step `r x snapshot_every`.

pub mod bandit;
pub mod kv;
pub mod ledger;
pub mod memory;
pub mod records;
pub mod redb_backend;
#[cfg(feature = "sled")]
pub mod sled_backend;

#[cfg(test)]
mod conformance;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::StoreKind;
pub use bandit::{BanditReport, BanditRound, BanditStepRecord, ClientBanditReport};
pub use kv::{Batch, KvBackend};
pub use ledger::{LedgerEntry, LedgerKind, Totals};
pub use records::{
    ClientFairReward, ClientRecord, ClientReputation, ClientValue, FairRewardRound,
    FederationRecord, FederationStatus, RoundRecord, UpdateRecord, ValuationStatus,
    VerticalStepRecord,
};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key that must be new already exists (duplicate federation, client name, upload or
    /// round commit); nothing was written.
    #[error("`{key}` already exists")]
    Conflict {
        /// The existing key, printable.
        key: String,
    },
    /// The backend failed (I/O, disk full, lock held by another process, ...).
    #[error("{backend} storage error while {context}: {source}")]
    Backend {
        /// Which backend (`"redb"`, `"sled"`).
        backend: &'static str,
        /// What was being done, with the path when opening.
        context: String,
        /// The backend's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Ledger entry `key` is already stored (or repeated in its batch) with different
    /// content; nothing was written.
    #[error("ledger entry `{key}` is already recorded with different content: {reason}")]
    LedgerConflict {
        /// The entry's key, printable.
        key: String,
        /// What differs.
        reason: String,
    },
    /// A ledger entry the ledger cannot hold (non-finite amount, empty id, ...); nothing
    /// was written.
    #[error("invalid ledger entry `{key}`: {reason}")]
    InvalidLedgerEntry {
        /// The entry's key, printable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored value cannot be decoded.
    #[error("corrupt record at `{key}`: {reason}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// Why it cannot be decoded.
        reason: String,
    },
}

/// Builders of the keys documented in the module docs.
mod keys {
    /// Escapes a string component so it cannot contain `/`.
    pub(super) fn part(s: &str) -> String {
        s.replace('%', "%25").replace('/', "%2F")
    }

    /// A number whose byte order is its numeric order.
    pub(super) fn num(n: u64) -> String {
        format!("{n:020}")
    }

    pub fn federations() -> Vec<u8> {
        b"fed/".to_vec()
    }
    pub fn federation(fed: &str) -> Vec<u8> {
        format!("fed/{}", part(fed)).into_bytes()
    }
    pub fn clients(fed: &str) -> Vec<u8> {
        format!("client/{}/", part(fed)).into_bytes()
    }
    pub fn client(fed: &str, seq: u64) -> Vec<u8> {
        format!("client/{}/{}", part(fed), num(seq)).into_bytes()
    }
    pub fn client_name(fed: &str, name: &str) -> Vec<u8> {
        format!("client-name/{}/{}", part(fed), part(name)).into_bytes()
    }
    pub fn updates(fed: &str, round: u64) -> Vec<u8> {
        format!("update/{}/{}/", part(fed), num(round)).into_bytes()
    }
    pub fn update(fed: &str, round: u64, client_id: &str) -> Vec<u8> {
        format!("update/{}/{}/{}", part(fed), num(round), part(client_id)).into_bytes()
    }
    pub fn deltas(fed: &str, round: u64) -> Vec<u8> {
        format!("delta/{}/{}/", part(fed), num(round)).into_bytes()
    }
    pub fn delta(fed: &str, round: u64, client_id: &str) -> Vec<u8> {
        format!("delta/{}/{}/{}", part(fed), num(round), part(client_id)).into_bytes()
    }
    pub fn model(fed: &str, version: u64) -> Vec<u8> {
        format!("model/{}/{}", part(fed), num(version)).into_bytes()
    }
    pub fn rounds(fed: &str) -> Vec<u8> {
        format!("round/{}/", part(fed)).into_bytes()
    }
    pub fn round(fed: &str, round: u64) -> Vec<u8> {
        format!("round/{}/{}", part(fed), num(round)).into_bytes()
    }
    pub fn client_model(fed: &str, client_id: &str, version: u64) -> Vec<u8> {
        format!("cmodel/{}/{}/{}", part(fed), part(client_id), num(version)).into_bytes()
    }
    pub fn embeddings(fed: &str, round: u64) -> Vec<u8> {
        format!("vembed/{}/{}/", part(fed), num(round)).into_bytes()
    }
    pub fn embedding(fed: &str, round: u64, client_id: &str) -> Vec<u8> {
        format!("vembed/{}/{}/{}", part(fed), num(round), part(client_id)).into_bytes()
    }
    pub fn gradients(fed: &str, round: u64) -> Vec<u8> {
        format!("vgrad/{}/{}", part(fed), num(round)).into_bytes()
    }
    pub fn steps(fed: &str) -> Vec<u8> {
        format!("vstep/{}/", part(fed)).into_bytes()
    }
    pub fn step(fed: &str, seq: u64) -> Vec<u8> {
        format!("vstep/{}/{}", part(fed), num(seq)).into_bytes()
    }
    pub fn snapshot(fed: &str, round: u64) -> Vec<u8> {
        format!("vsnap/{}/{}", part(fed), num(round)).into_bytes()
    }
    pub fn ledger(fed: &str) -> Vec<u8> {
        format!("ledger/{}/", part(fed)).into_bytes()
    }
    pub fn ledger_round(fed: &str, round: u64) -> Vec<u8> {
        format!("ledger/{}/{}/", part(fed), num(round)).into_bytes()
    }
    pub fn ledger_entry(fed: &str, round: u64, client_id: &str, kind: &str) -> Vec<u8> {
        format!(
            "ledger/{}/{}/{}/{}",
            part(fed),
            num(round),
            part(client_id),
            kind
        )
        .into_bytes()
    }

    /// The string component `part` escaped, or `None` if `escaped` is not such an escape.
    pub fn unpart(escaped: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(escaped).ok()?;
        let plain = text.replace("%2F", "/").replace("%25", "%");
        (part(&plain) == text).then_some(plain)
    }
}

/// What a snapshot step commits besides the step (see [`Store::commit_vertical_step`]).
#[derive(Clone, Copy, Debug)]
pub struct VerticalSnapshot<'a> {
    /// The snapshot's round record (`round` = snapshot index = model version).
    pub round: &'a RoundRecord,
    /// The server bias after the step.
    pub bias: &'a [f32],
    /// The whole embedding table, parties in enrollment order, each `N x C` row-major.
    pub table: &'a [f32],
    /// The federation's record with the new progress.
    pub fed: &'a FederationRecord,
}

fn encode<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: kv::display_key(key),
        reason: format!("cannot encode record: {e}"),
    })
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: kv::display_key(key),
        reason: e.to_string(),
    })
}

fn decode_tensor(key: &[u8], bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    fedval_core::tensor::from_le_bytes(bytes).map_err(|e| StoreError::Corrupt {
        key: kv::display_key(key),
        reason: e.to_string(),
    })
}

/// Adds `record`, encoded, to `batch` under `key` (replacing what is stored there).
pub(super) fn with_record<T: Serialize>(
    batch: Batch,
    key: Vec<u8>,
    record: &T,
) -> Result<Batch, StoreError> {
    let value = encode(&key, record)?;
    Ok(batch.put(key, value))
}

/// Adds `record`, encoded, to `batch` under `key`, failing the batch with
/// [`StoreError::Conflict`] if `key` is already stored.
pub(super) fn with_new_record<T: Serialize>(
    batch: Batch,
    key: Vec<u8>,
    record: &T,
) -> Result<Batch, StoreError> {
    let value = encode(&key, record)?;
    Ok(batch.insert_new(key, value))
}

/// Adds a committed round to `batch`: its record (the batch fails with
/// [`StoreError::Conflict`] if the round is already stored) and the model it produced, as
/// version `round.model_version`.
fn with_round(
    batch: Batch,
    federation: &str,
    round: &RoundRecord,
    model: &[f32],
) -> Result<Batch, StoreError> {
    Ok(
        with_new_record(batch, keys::round(federation, round.round), round)?.put(
            keys::model(federation, round.model_version),
            fedval_core::tensor::to_le_bytes(model),
        ),
    )
}

/// The coordinator's durable state; cheap to clone (one shared backend).
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn KvBackend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store over any backend.
    pub fn with_backend(kv: impl KvBackend) -> Self {
        Self { kv: Arc::new(kv) }
    }

    /// A store that lives in memory only (tests, simulations).
    pub fn memory() -> Self {
        Self::with_backend(memory::MemoryBackend::new())
    }

    /// Opens (creating if needed) the redb store `<dir>/fedval.redb`.
    pub fn open_redb(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::with_backend(redb_backend::RedbBackend::open(dir)?))
    }

    /// Opens (creating if needed) the sled store `<dir>/sled/`.
    #[cfg(feature = "sled")]
    pub fn open_sled(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::with_backend(sled_backend::SledBackend::open(dir)?))
    }

    /// Opens the store of the given kind in `dir` (ignored for [`StoreKind::Memory`]).
    pub fn open(kind: StoreKind, dir: &Path) -> Result<Self, StoreError> {
        match kind {
            StoreKind::Memory => Ok(Self::memory()),
            StoreKind::Redb => Self::open_redb(dir),
            #[cfg(feature = "sled")]
            StoreKind::Sled => Self::open_sled(dir),
            #[cfg(not(feature = "sled"))]
            StoreKind::Sled => Err(StoreError::Backend {
                backend: "sled",
                context: format!("opening {}", dir.join("sled").display()),
                source: "this fedval-server was built without sled support; rebuild with \
                         `--features sled` or use store = \"redb\""
                    .into(),
            }),
        }
    }

    /// Creates a federation with its initial model (version `rec.model_version`, 0 for a
    /// new federation); [`StoreError::Conflict`] if the id exists.
    pub fn create_federation(
        &self,
        rec: &FederationRecord,
        initial_model: &[f32],
    ) -> Result<(), StoreError> {
        let id = &rec.config.id;
        let key = keys::federation(id);
        let value = encode(&key, rec)?;
        self.kv.commit(Batch::new().insert_new(key, value).put(
            keys::model(id, rec.model_version),
            fedval_core::tensor::to_le_bytes(initial_model),
        ))
    }

    /// Overwrites a federation's record (status changes outside a round commit).
    pub fn put_federation(&self, rec: &FederationRecord) -> Result<(), StoreError> {
        self.kv.commit(with_record(
            Batch::new(),
            keys::federation(&rec.config.id),
            rec,
        )?)
    }

    /// The federation `id`, if it exists.
    pub fn get_federation(&self, id: &str) -> Result<Option<FederationRecord>, StoreError> {
        self.get_record(&keys::federation(id))
    }

    /// Every federation, ordered by id.
    pub fn list_federations(&self) -> Result<Vec<FederationRecord>, StoreError> {
        self.scan_records(&keys::federations())
    }

    /// Enrolls a client; [`StoreError::Conflict`] if its name (or its `seq`) is taken in the
    /// federation.
    pub fn add_client(&self, federation: &str, rec: &ClientRecord) -> Result<(), StoreError> {
        let key = keys::client(federation, rec.seq);
        let value = encode(&key, rec)?;
        self.kv.commit(
            Batch::new()
                .insert_new(
                    keys::client_name(federation, &rec.name),
                    rec.client_id.clone().into_bytes(),
                )
                .insert_new(key, value),
        )
    }

    /// The clients of a federation, in enrollment (`seq`) order.
    pub fn list_clients(&self, federation: &str) -> Result<Vec<ClientRecord>, StoreError> {
        self.scan_records(&keys::clients(federation))
    }

    /// Stores a client's update for `rec.round` with its tensor; durable on return.
    /// [`StoreError::Conflict`] if that client already uploaded for that round (the first
    /// upload is kept).
    pub fn put_update(
        &self,
        federation: &str,
        rec: &UpdateRecord,
        delta: &[f32],
    ) -> Result<(), StoreError> {
        let key = keys::update(federation, rec.round, &rec.client_id);
        let value = encode(&key, rec)?;
        self.kv.commit(Batch::new().insert_new(key, value).put(
            keys::delta(federation, rec.round, &rec.client_id),
            fedval_core::tensor::to_le_bytes(delta),
        ))
    }

    /// The updates of one round with their tensors, ordered by client id.
    pub fn list_updates(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Vec<(UpdateRecord, Vec<f32>)>, StoreError> {
        let rec_prefix = keys::updates(federation, round);
        let delta_prefix = keys::deltas(federation, round);
        let recs = self.kv.scan_prefix(&rec_prefix)?;
        let deltas = self.kv.scan_prefix(&delta_prefix)?;
        if recs.len() != deltas.len() {
            return Err(StoreError::Corrupt {
                key: kv::display_key(&rec_prefix),
                reason: format!(
                    "{} update records but {} update tensors",
                    recs.len(),
                    deltas.len()
                ),
            });
        }
        recs.into_iter()
            .zip(deltas)
            .map(|((rk, rv), (dk, dv))| {
                // Both lists are sorted by the same client-id suffix, written in one batch.
                if rk.get(rec_prefix.len()..) != dk.get(delta_prefix.len()..) {
                    return Err(StoreError::Corrupt {
                        key: kv::display_key(&rk),
                        reason: format!("no tensor beside it (found `{}`)", kv::display_key(&dk)),
                    });
                }
                Ok((decode(&rk, &rv)?, decode_tensor(&dk, &dv)?))
            })
            .collect()
    }

    /// Global model `version` of a federation, if stored.
    pub fn get_model(
        &self,
        federation: &str,
        version: u64,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        self.get_tensor(&keys::model(federation, version))
    }

    /// A client's own model (reward-policy federations) of `version`, if stored.
    pub fn get_client_model(
        &self,
        federation: &str,
        client_id: &str,
        version: u64,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        self.get_tensor(&keys::client_model(federation, client_id, version))
    }

    /// Commits a round in ONE atomic, durable batch: the round record, the new model (as
    /// version `round.model_version`), each `(client_id, model)` of `client_models` as
    /// that client's own model of the same version (reward policies; empty otherwise), the
    /// round's ledger entries `ledger` (FACT penalties and prizes; empty otherwise, each
    /// new) and the federation's record `fed` (which must be `federation`'s).
    /// [`StoreError::Conflict`] if the round was already committed (or one of `ledger`
    /// is already stored), in which case nothing changes; an entry the ledger cannot hold
    /// fails with [`StoreError::InvalidLedgerEntry`], writing nothing.
    pub fn commit_round(
        &self,
        federation: &str,
        round: &RoundRecord,
        new_model: &[f32],
        client_models: &[(String, &[f32])],
        ledger: &[LedgerEntry],
        fed: &FederationRecord,
    ) -> Result<(), StoreError> {
        let mut batch = with_round(Batch::new(), federation, round, new_model)?;
        for (client_id, model) in client_models {
            batch = batch.put(
                keys::client_model(federation, client_id, round.model_version),
                fedval_core::tensor::to_le_bytes(model),
            );
        }
        let batch = ledger::with_ledger(batch, ledger, fed)?;
        self.kv
            .commit(with_record(batch, keys::federation(federation), fed)?)
    }

    /// Vertical federations: stores party `client_id`'s embeddings of `round` (row-major
    /// `rows x C` f32); durable on return. [`StoreError::Conflict`] if that party already
    /// sent embeddings for that round (the first ones are kept).
    pub fn put_embeddings(
        &self,
        federation: &str,
        round: u64,
        client_id: &str,
        embeddings: &[f32],
    ) -> Result<(), StoreError> {
        self.kv.commit(Batch::new().insert_new(
            keys::embedding(federation, round, client_id),
            fedval_core::tensor::to_le_bytes(embeddings),
        ))
    }

    /// Vertical federations: every party's embeddings of `round`, ordered by client id.
    pub fn list_embeddings(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Vec<(String, Vec<f32>)>, StoreError> {
        self.scan_keyed(
            &keys::embeddings(federation, round),
            "an escaped client id",
            keys::unpart,
            decode_tensor,
        )
    }

    /// Vertical federations: commits a training round in ONE atomic, durable batch: the
    /// round record, the server's bias after it (as model version `round.model_version`),
    /// the round's per-sample gradients and the federation's record `fed`.
    /// [`StoreError::Conflict`] if the round was already committed (nothing changes).
    pub fn commit_vertical_round(
        &self,
        federation: &str,
        round: &RoundRecord,
        bias: &[f32],
        gradients: &[f32],
        fed: &FederationRecord,
    ) -> Result<(), StoreError> {
        let batch = with_round(Batch::new(), federation, round, bias)?.put(
            keys::gradients(federation, round.round),
            fedval_core::tensor::to_le_bytes(gradients),
        );
        self.kv
            .commit(with_record(batch, keys::federation(federation), fed)?)
    }

    /// Vertical federations: the per-sample gradients committed with `round`, if any.
    pub fn get_gradients(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        self.get_tensor(&keys::gradients(federation, round))
    }

    /// Asynchronous vertical federations: appends step `seq` (1-based over all parties)
    /// to the step log in ONE atomic, durable batch; with `snapshot`, the same batch also
    /// commits the snapshot round (its record, the bias as model version `round.round`,
    /// the whole embedding table and the federation's record). [`StoreError::Conflict`]
    /// if step `seq` (or the round) is already stored; nothing changes then.
    pub fn commit_vertical_step(
        &self,
        federation: &str,
        seq: u64,
        step: &VerticalStepRecord,
        snapshot: Option<VerticalSnapshot<'_>>,
    ) -> Result<(), StoreError> {
        let mut batch = with_new_record(Batch::new(), keys::step(federation, seq), step)?;
        if let Some(snap) = snapshot {
            batch = with_round(batch, federation, snap.round, snap.bias)?.put(
                keys::snapshot(federation, snap.round.round),
                fedval_core::tensor::to_le_bytes(snap.table),
            );
            batch = with_record(batch, keys::federation(federation), snap.fed)?;
        }
        self.kv.commit(batch)
    }

    /// Asynchronous vertical federations: the step log, `(seq, step)` in ascending order.
    pub fn list_vertical_steps(
        &self,
        federation: &str,
    ) -> Result<Vec<(u64, VerticalStepRecord)>, StoreError> {
        self.scan_keyed(
            &keys::steps(federation),
            "a step number",
            |s| std::str::from_utf8(s).ok()?.parse::<u64>().ok(),
            decode,
        )
    }

    /// Asynchronous vertical federations: the embedding table committed with snapshot
    /// round `round`, if any.
    pub fn get_vertical_snapshot(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        self.get_tensor(&keys::snapshot(federation, round))
    }

    /// Replaces the records of already committed rounds and the federation's record in
    /// ONE atomic, durable batch (a vertical federation's valuation completes every round
    /// and finishes the federation at once).
    pub fn update_rounds(
        &self,
        federation: &str,
        rounds: &[RoundRecord],
        fed: &FederationRecord,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        for round in rounds {
            batch = with_record(batch, keys::round(federation, round.round), round)?;
        }
        self.kv
            .commit(with_record(batch, keys::federation(federation), fed)?)
    }

    /// Replaces the record of an already committed round (its valuation arrives after
    /// the commit); durable on return.
    pub fn update_round(&self, federation: &str, round: &RoundRecord) -> Result<(), StoreError> {
        self.kv.commit(with_record(
            Batch::new(),
            keys::round(federation, round.round),
            round,
        )?)
    }

    /// The committed rounds of a federation, in ascending round order.
    pub fn list_rounds(&self, federation: &str) -> Result<Vec<RoundRecord>, StoreError> {
        self.scan_records(&keys::rounds(federation))
    }

    /// Committed round `round` of a federation, if stored (one read, no scan).
    pub fn get_round(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Option<RoundRecord>, StoreError> {
        self.get_record(&keys::round(federation, round))
    }

    /// The record stored under `key`, if any.
    fn get_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.kv
            .get(key)?
            .map(|bytes| decode(key, &bytes))
            .transpose()
    }

    /// The tensor stored under `key`, if any.
    fn get_tensor(&self, key: &[u8]) -> Result<Option<Vec<f32>>, StoreError> {
        self.kv
            .get(key)?
            .map(|bytes| decode_tensor(key, &bytes))
            .transpose()
    }

    /// Every entry under `prefix` as `(suffix, value)`: `suffix` parses what follows the
    /// prefix in a key (`what` describes it in the error for a key it refuses) and
    /// `value` decodes the stored bytes.
    fn scan_keyed<K, V>(
        &self,
        prefix: &[u8],
        what: &str,
        suffix: impl Fn(&[u8]) -> Option<K>,
        value: impl Fn(&[u8], &[u8]) -> Result<V, StoreError>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        self.kv
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| {
                let key =
                    k.get(prefix.len()..)
                        .and_then(&suffix)
                        .ok_or_else(|| StoreError::Corrupt {
                            key: kv::display_key(&k),
                            reason: format!("the key does not end in {what}"),
                        })?;
                Ok((key, value(&k, &v)?))
            })
            .collect()
    }

    /// Every record under `prefix`, in key order.
    fn scan_records<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        self.kv
            .scan_prefix(prefix)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_components_cannot_escape_their_slot() {
        assert_eq!(keys::federation("a/b%c"), b"fed/a%2Fb%25c".to_vec());
        assert_eq!(
            keys::update("f", 7, "c/1"),
            b"update/f/00000000000000000007/c%2F1".to_vec()
        );
        assert!(!keys::client("a/0", 0).starts_with(&keys::clients("a")));
        assert!(keys::model("f", 9) < keys::model("f", 10));
        assert!(keys::model("f", u64::MAX).len() == "model/f/".len() + 20);
    }

    #[test]
    fn corrupt_records_name_their_key() {
        let kv = memory::MemoryBackend::new();
        kv.commit(
            Batch::new()
                .put(keys::federation("x"), b"{not json".to_vec())
                .put(keys::model("x", 0), vec![0, 0, 128]),
        )
        .expect("writes");
        let store = Store::with_backend(kv);
        let err = store.get_federation("x").expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if key == "fed/x"),
            "{err}"
        );
        let err = store.get_model("x", 0).expect_err("misaligned");
        assert!(err.to_string().contains("not a multiple of 4"), "{err}");
        let err = store.list_federations().expect_err("corrupt in a scan");
        assert!(matches!(err, StoreError::Corrupt { .. }));
    }

    #[test]
    fn update_without_tensor_is_corrupt() {
        let kv = memory::MemoryBackend::new();
        kv.commit(Batch::new().put(keys::update("f", 0, "a"), b"{}".to_vec()))
            .expect("writes");
        let err = Store::with_backend(kv)
            .list_updates("f", 0)
            .expect_err("missing tensor");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[cfg(not(feature = "sled"))]
    #[test]
    fn sled_without_feature_says_how_to_enable_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Store::open(StoreKind::Sled, dir.path()).expect_err("feature off");
        assert!(err.to_string().contains("--features sled"), "{err}");
    }

    #[test]
    fn redb_open_failure_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = Store::open(StoreKind::Redb, &file).expect_err("a file is not a directory");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
