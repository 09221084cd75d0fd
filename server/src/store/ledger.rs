//! The payments ledger: append-only records of what each client was paid, penalised or
//! awarded, with the inputs that produced each amount.
//!
//! An entry is keyed by `(federation, round, client, kind)` and written at most once:
//! [`Store::record_ledger`] commits a whole batch of entries in ONE atomic, durable batch,
//! treats an entry that is already stored with the same content as a no-op (so a request
//! replayed after a crash between computing and recording payments is harmless) and
//! refuses one stored with different content ([`StoreError::LedgerConflict`]), so nothing
//! is ever paid twice or overwritten. Entries a round produces (FACT's penalties and
//! prizes) are instead written by [`Store::commit_round`] in the round's own batch: they
//! exist exactly when the round does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kv::{self, Batch};
use super::{FederationRecord, Store, StoreError, decode, keys, with_new_record, with_record};

/// What a ledger entry records; its amount is added to ([`LedgerKind::Payment`],
/// [`LedgerKind::Prize`]) or subtracted from ([`LedgerKind::Penalty`]) a client's net.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// A payment for participation (e.g. a critical-value payment).
    Payment,
    /// A penalty (e.g. for contributing less than required).
    Penalty,
    /// A prize (e.g. won in a truthfulness competition).
    Prize,
}

impl LedgerKind {
    /// The stored and wire spelling (`"payment"`, `"penalty"`, `"prize"`).
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Payment => "payment",
            LedgerKind::Penalty => "penalty",
            LedgerKind::Prize => "prize",
        }
    }
}

/// One recorded payment, penalty or prize.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The federation it belongs to.
    pub federation: String,
    /// The round that produced it.
    pub round: u64,
    /// The client it is for.
    pub client_id: String,
    /// Payment, penalty or prize.
    pub kind: LedgerKind,
    /// The amount (finite; its sign is kept as computed).
    pub amount: f64,
    /// The mechanism that computed it (e.g. `"fact"`, `"truth_fedban"`).
    pub mechanism: String,
    /// The named inputs that produced the amount (finite), for audit.
    pub inputs: BTreeMap<String, f64>,
    /// When it was recorded, milliseconds since the Unix epoch (not part of its content:
    /// a replay computed later is still the same entry).
    pub recorded_at_ms: u64,
}

impl LedgerEntry {
    /// Whether `self` and `other` record the same thing (every field but `recorded_at_ms`).
    pub fn same_content(&self, other: &LedgerEntry) -> bool {
        self.federation == other.federation
            && self.round == other.round
            && self.client_id == other.client_id
            && self.kind == other.kind
            && self.amount == other.amount
            && self.mechanism == other.mechanism
            && self.inputs == other.inputs
    }

    /// The entry's key in the store.
    fn key(&self) -> Vec<u8> {
        keys::ledger_entry(
            &self.federation,
            self.round,
            &self.client_id,
            self.kind.as_str(),
        )
    }

    /// Refuses an entry the ledger cannot hold: empty ids, a non-finite amount or input,
    /// or a federation other than `fed`'s.
    fn validate(&self, key: &[u8], fed: Option<&FederationRecord>) -> Result<(), StoreError> {
        let invalid = |reason: String| StoreError::InvalidLedgerEntry {
            key: kv::display_key(key),
            reason,
        };
        if self.federation.is_empty() {
            return Err(invalid("the federation id is empty".into()));
        }
        if self.client_id.is_empty() {
            return Err(invalid("the client id is empty".into()));
        }
        if !self.amount.is_finite() {
            return Err(invalid(format!("amount {} is not finite", self.amount)));
        }
        if let Some((name, value)) = self.inputs.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(format!("input `{name}` = {value} is not finite")));
        }
        if let Some(fed) = fed.filter(|f| f.config.id != self.federation) {
            return Err(invalid(format!(
                "the entry is for federation `{}` but the batch commits federation `{}`",
                self.federation, fed.config.id
            )));
        }
        Ok(())
    }

    /// Why `self` and `stored` differ, for a conflict message.
    fn difference(&self, stored: &LedgerEntry) -> String {
        if self.amount != stored.amount {
            format!("amount {} != stored {}", self.amount, stored.amount)
        } else if self.mechanism != stored.mechanism {
            format!(
                "mechanism `{}` != stored `{}`",
                self.mechanism, stored.mechanism
            )
        } else {
            "the inputs differ from the stored ones".into()
        }
    }
}

/// A client's ledger summed by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Sum of its payments.
    pub payments: f64,
    /// Sum of its penalties.
    pub penalties: f64,
    /// Sum of its prizes.
    pub prizes: f64,
    /// `payments + prizes - penalties`.
    pub net: f64,
}

impl Totals {
    /// Adds one entry's amount under its kind and updates `net`.
    fn add(&mut self, kind: LedgerKind, amount: f64) {
        match kind {
            LedgerKind::Payment => self.payments += amount,
            LedgerKind::Penalty => self.penalties += amount,
            LedgerKind::Prize => self.prizes += amount,
        }
        self.net = self.payments + self.prizes - self.penalties;
    }
}

/// Per-client totals of `entries`, by client id.
pub fn totals(entries: &[LedgerEntry]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for e in entries {
        out.entry(e.client_id.clone())
            .or_default()
            .add(e.kind, e.amount);
    }
    out
}

/// `entries` by key after checking each one ([`LedgerEntry::validate`]); an entry repeated
/// with the same content counts once, one repeated with different content is a
/// [`StoreError::LedgerConflict`].
fn unique_entries<'a>(
    entries: &'a [LedgerEntry],
    fed: Option<&FederationRecord>,
) -> Result<BTreeMap<Vec<u8>, &'a LedgerEntry>, StoreError> {
    let mut unique: BTreeMap<Vec<u8>, &LedgerEntry> = BTreeMap::new();
    for entry in entries {
        let key = entry.key();
        entry.validate(&key, fed)?;
        if let Some(first) = unique.get(&key) {
            if !first.same_content(entry) {
                return Err(StoreError::LedgerConflict {
                    key: kv::display_key(&key),
                    reason: format!("repeated in the batch: {}", entry.difference(first)),
                });
            }
        } else {
            unique.insert(key, entry);
        }
    }
    Ok(unique)
}

/// Adds the entries of a round being committed to `batch` (the round commit of
/// [`Store::commit_round`]): each must be new, so the batch fails with
/// [`StoreError::Conflict`] if one is already stored. A round commits once, so its
/// entries are written exactly when the round is, in the same atomic batch.
pub(super) fn with_ledger(
    mut batch: Batch,
    entries: &[LedgerEntry],
    fed: &FederationRecord,
) -> Result<Batch, StoreError> {
    for (key, entry) in unique_entries(entries, Some(fed))? {
        batch = with_new_record(batch, key, entry)?;
    }
    Ok(batch)
}

/// How many times a batch is re-checked when another writer stored one of its keys
/// between the check and the commit.
const COMMIT_ATTEMPTS: usize = 3;

impl Store {
    /// Records `entries` (and, if given, the federation's record `fed`) in ONE atomic,
    /// durable batch and returns how many entries were new. An entry whose
    /// `(federation, round, client, kind)` is already stored with the same content (see
    /// [`LedgerEntry::same_content`]) is skipped, so replaying a batch is a no-op that
    /// returns 0 and writes nothing, not even `fed`. Fails, writing nothing, with
    /// [`StoreError::InvalidLedgerEntry`] for an entry the ledger cannot hold and with
    /// [`StoreError::LedgerConflict`] if an entry is stored (or repeated in `entries`)
    /// with different content.
    pub fn record_ledger(
        &self,
        entries: &[LedgerEntry],
        fed: Option<&FederationRecord>,
    ) -> Result<usize, StoreError> {
        let unique = unique_entries(entries, fed)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut batch = Batch::new();
            let mut new = 0;
            for (key, entry) in &unique {
                if let Some(bytes) = self.kv.get(key)? {
                    let stored: LedgerEntry = decode(key, &bytes)?;
                    if stored.same_content(entry) {
                        continue;
                    }
                    return Err(StoreError::LedgerConflict {
                        key: kv::display_key(key),
                        reason: entry.difference(&stored),
                    });
                }
                batch = with_new_record(batch, key.clone(), *entry)?;
                new += 1;
            }
            if new == 0 {
                return Ok(0);
            }
            if let Some(fed) = fed {
                batch = with_record(batch, keys::federation(&fed.config.id), fed)?;
            }
            match self.kv.commit(batch) {
                // Another writer stored one of the keys after the check: check again.
                Err(StoreError::Conflict { .. }) if attempt < COMMIT_ATTEMPTS => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(new),
            }
        }
    }

    /// The ledger of `federation`, ordered by (round, client id, kind).
    pub fn list_ledger(&self, federation: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        self.scan_ledger(&keys::ledger(federation))
    }

    /// The entries of `federation`'s round `round`, ordered by (client id, kind): one
    /// prefix scan of that round, not of the whole ledger.
    pub fn list_round_ledger(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.scan_ledger(&keys::ledger_round(federation, round))
    }

    /// The entries under `prefix`, ordered by (round, client id, kind).
    fn scan_ledger(&self, prefix: &[u8]) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut entries: Vec<LedgerEntry> = self.scan_records(prefix)?;
        entries
            .sort_by(|a, b| (a.round, &a.client_id, a.kind).cmp(&(b.round, &b.client_id, b.kind)));
        Ok(entries)
    }

    /// Per-client totals of `federation`'s ledger, by client id.
    pub fn ledger_totals(&self, federation: &str) -> Result<BTreeMap<String, Totals>, StoreError> {
        Ok(totals(&self.list_ledger(federation)?))
    }
}
