//! Durable state of bandit federations (ALGORITHMS.md section 7): the step log, the cost
//! reports and uploads of communication rounds, the clients' sync acknowledgements, and the
//! round commit that writes the round record, the new aggregate `(V_g, b_g)`, the payments
//! and the federation's progress in ONE atomic batch.
//!
//! Vectors and matrices (a `d x d` Gram update is up to 512 KiB) are stored as
//! little-endian `f64` bytes, so a restart reloads them bit for bit and recomputes exactly
//! the selection and payments it would have computed before the crash. Scalars go in JSON
//! records (`serde_json` with `float_roundtrip`, also exact).

use serde::{Deserialize, Serialize};

use super::kv::{self, Batch};
use super::records::float_repr;
use super::{
    FederationRecord, LedgerEntry, RoundRecord, Store, StoreError, decode, keys, ledger,
    with_new_record, with_record,
};

/// One step of a bandit run (the step log): played, as the active client submitted it, or
/// skipped, when the active client did not answer its play task before the deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanditStepRecord {
    /// The active client of the step (the one that did not answer, for a skipped step).
    pub client_id: String,
    /// Global step `t` (1-based).
    pub step: u64,
    /// The reward it observed.
    pub reward: f64,
    /// Its trigger statistic `(t - t_last) log(det V / det(V - dV))` after the update.
    pub trigger_statistic: f64,
    /// Whether the statistic exceeded the threshold (a communication round follows).
    pub triggered: bool,
    /// The active client did not answer within the federation's `round_timeout_ms`: the
    /// step was skipped (reward and statistic 0, not triggered). Steps stored before
    /// skipping existed decode as played; a played step is stored without the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl BanditStepRecord {
    /// The record of step `step`, skipped because `client_id`, its active client, did not
    /// answer in time.
    pub fn skipped(client_id: String, step: u64) -> Self {
        Self {
            client_id,
            step,
            reward: 0.0,
            trigger_statistic: 0.0,
            triggered: false,
            skipped: true,
        }
    }
}

/// A client's answer to a communication round's report request: its reported cost and its
/// pending Gram update `dV` (row-major `d x d`).
#[derive(Clone, Debug, PartialEq)]
pub struct BanditReport {
    /// Reported cost of participating.
    pub cost: f64,
    /// The pending Gram update, row-major `d x d`.
    pub gram_update: Vec<f64>,
}

/// One committed Truth-FedBan communication round (`RoundRecord::bandit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanditRound {
    /// Global step at which the trigger fired.
    pub step: u64,
    /// The active client whose trigger fired.
    pub trigger_client: String,
    /// Participants in the order the greedy selection added them.
    pub selected: Vec<String>,
    /// `g(S)` the selection reached.
    #[serde(with = "float_repr")]
    pub value: f64,
    /// The target `g(all reporters) + log(beta)`.
    #[serde(with = "float_repr")]
    pub target: f64,
    /// Every client that reported, in enrollment order.
    pub reports: Vec<ClientBanditReport>,
    /// The trigger statistic the server recomputed from the trigger client's reported `dV`
    /// and the aggregate it last downloaded; `None` when it could not be recomputed (the
    /// trigger client did not report, or its matrices could not be factored).
    #[serde(default)]
    pub trigger_statistic: Option<f64>,
    /// Why the round was void (its trigger did not verify, or its selection could not be
    /// computed): nobody was selected or paid and the aggregate did not change. `None` for
    /// a settled round.
    #[serde(default)]
    pub void_reason: Option<String>,
}

/// One client's report in a communication round and what it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientBanditReport {
    /// The client.
    pub client_id: String,
    /// Its reported cost.
    pub reported_cost: f64,
    /// Whether the selection chose it.
    pub selected: bool,
    /// What it was paid (0 if not selected, or selected but its upload never arrived).
    pub payment: f64,
    /// True when it was essential and paid the configured cap.
    pub capped: bool,
    /// `g({client}) - g({})`: the log-det gain of its update alone.
    #[serde(with = "float_repr")]
    pub gain: f64,
}

/// Keys of the bandit records (see the table in the store's module docs).
mod bkeys {
    use super::keys::{num, part};

    pub fn step(fed: &str, step: u64) -> Vec<u8> {
        format!("bstep/{}/{}", part(fed), num(step)).into_bytes()
    }
    pub fn last_step(fed: &str) -> Vec<u8> {
        format!("bprog/{}", part(fed)).into_bytes()
    }
    pub fn reports(fed: &str, round: u64) -> Vec<u8> {
        format!("breport/{}/{}/", part(fed), num(round)).into_bytes()
    }
    pub fn report(fed: &str, round: u64, client_id: &str) -> Vec<u8> {
        format!("breport/{}/{}/{}", part(fed), num(round), part(client_id)).into_bytes()
    }
    pub fn uploads(fed: &str, round: u64) -> Vec<u8> {
        format!("bupload/{}/{}/", part(fed), num(round)).into_bytes()
    }
    pub fn upload(fed: &str, round: u64, client_id: &str) -> Vec<u8> {
        format!("bupload/{}/{}/{}", part(fed), num(round), part(client_id)).into_bytes()
    }
    pub fn syncs(fed: &str) -> Vec<u8> {
        format!("bsync/{}/", part(fed)).into_bytes()
    }
    pub fn sync(fed: &str, client_id: &str) -> Vec<u8> {
        format!("bsync/{}/{}", part(fed), part(client_id)).into_bytes()
    }
    pub fn aggregate(fed: &str) -> Vec<u8> {
        format!("bagg/{}", part(fed)).into_bytes()
    }
}

/// Little-endian bytes of `values`.
fn to_bytes<'a>(values: impl IntoIterator<Item = &'a f64>) -> Vec<u8> {
    values.into_iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The `f64`s of stored little-endian `bytes` (corrupt unless a multiple of 8 long).
fn from_bytes(key: &[u8], bytes: &[u8]) -> Result<Vec<f64>, StoreError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(StoreError::Corrupt {
            key: kv::display_key(key),
            reason: format!("{} bytes is not a multiple of 8 (f64)", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })
        .collect())
}

/// A stored report: the cost followed by the Gram update.
fn decode_report(key: &[u8], bytes: &[u8]) -> Result<BanditReport, StoreError> {
    let mut values = from_bytes(key, bytes)?;
    if values.is_empty() {
        return Err(StoreError::Corrupt {
            key: kv::display_key(key),
            reason: "an empty report (no cost)".into(),
        });
    }
    let cost = values.remove(0);
    Ok(BanditReport {
        cost,
        gram_update: values,
    })
}

impl Store {
    /// Appends step `rec.step` to `federation`'s step log and records it as the last step,
    /// in ONE atomic, durable batch. [`StoreError::Conflict`] if the step is already stored
    /// (nothing changes).
    pub fn put_bandit_step(
        &self,
        federation: &str,
        rec: &BanditStepRecord,
    ) -> Result<(), StoreError> {
        let batch = with_new_record(Batch::new(), bkeys::step(federation, rec.step), rec)?;
        self.kv
            .commit(with_record(batch, bkeys::last_step(federation), &rec.step)?)
    }

    /// Step `step` of the log, if stored.
    pub fn get_bandit_step(
        &self,
        federation: &str,
        step: u64,
    ) -> Result<Option<BanditStepRecord>, StoreError> {
        self.get_record(&bkeys::step(federation, step))
    }

    /// The last stored step (one read, not a scan of the log), `None` before the first.
    pub fn last_bandit_step(
        &self,
        federation: &str,
    ) -> Result<Option<BanditStepRecord>, StoreError> {
        let key = bkeys::last_step(federation);
        let Some(step) = self.get_record::<u64>(&key)? else {
            return Ok(None);
        };
        match self.get_bandit_step(federation, step)? {
            Some(rec) => Ok(Some(rec)),
            None => Err(StoreError::Corrupt {
                key: kv::display_key(&key),
                reason: format!("names step {step}, which the step log does not hold"),
            }),
        }
    }

    /// Stores `client_id`'s report of communication round `round`; durable on return.
    /// [`StoreError::Conflict`] if that client already reported in that round (the first
    /// report is kept).
    pub fn put_bandit_report(
        &self,
        federation: &str,
        round: u64,
        client_id: &str,
        report: &BanditReport,
    ) -> Result<(), StoreError> {
        let values = std::iter::once(&report.cost).chain(&report.gram_update);
        self.kv.commit(Batch::new().insert_new(
            bkeys::report(federation, round, client_id),
            to_bytes(values),
        ))
    }

    /// `client_id`'s report of round `round`, if stored.
    pub fn get_bandit_report(
        &self,
        federation: &str,
        round: u64,
        client_id: &str,
    ) -> Result<Option<BanditReport>, StoreError> {
        let key = bkeys::report(federation, round, client_id);
        self.kv
            .get(&key)?
            .map(|bytes| decode_report(&key, &bytes))
            .transpose()
    }

    /// The reports of round `round`, ordered by client id.
    pub fn list_bandit_reports(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Vec<(String, BanditReport)>, StoreError> {
        self.scan_keyed(
            &bkeys::reports(federation, round),
            "an escaped client id",
            keys::unpart,
            decode_report,
        )
    }

    /// Stores selected client `client_id`'s reward vector `b` of round `round`; durable on
    /// return. [`StoreError::Conflict`] if it already uploaded for that round.
    pub fn put_bandit_upload(
        &self,
        federation: &str,
        round: u64,
        client_id: &str,
        b: &[f64],
    ) -> Result<(), StoreError> {
        self.kv.commit(
            Batch::new().insert_new(bkeys::upload(federation, round, client_id), to_bytes(b)),
        )
    }

    /// `client_id`'s upload of round `round`, if stored.
    pub fn get_bandit_upload(
        &self,
        federation: &str,
        round: u64,
        client_id: &str,
    ) -> Result<Option<Vec<f64>>, StoreError> {
        let key = bkeys::upload(federation, round, client_id);
        self.kv
            .get(&key)?
            .map(|bytes| from_bytes(&key, &bytes))
            .transpose()
    }

    /// The uploads of round `round`, ordered by client id.
    pub fn list_bandit_uploads(
        &self,
        federation: &str,
        round: u64,
    ) -> Result<Vec<(String, Vec<f64>)>, StoreError> {
        self.scan_keyed(
            &bkeys::uploads(federation, round),
            "an escaped client id",
            keys::unpart,
            from_bytes,
        )
    }

    /// Records that `client_id` downloaded the aggregate of round `round` (overwriting an
    /// older round); durable on return.
    pub fn put_bandit_synced(
        &self,
        federation: &str,
        client_id: &str,
        round: u64,
    ) -> Result<(), StoreError> {
        self.kv.commit(with_record(
            Batch::new(),
            bkeys::sync(federation, client_id),
            &round,
        )?)
    }

    /// The last round each client acknowledged downloading, ordered by client id.
    pub fn list_bandit_synced(&self, federation: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.scan_keyed(
            &bkeys::syncs(federation),
            "an escaped client id",
            keys::unpart,
            decode,
        )
    }

    /// Commits a communication round in ONE atomic, durable batch: the round record (with
    /// its `bandit` field), the new aggregate `[V_g (row-major d x d), b_g (d)]`, the
    /// round's payments `ledger` (each new) and the federation's record `fed`.
    /// [`StoreError::Conflict`] if the round (or one of its ledger entries) is already
    /// stored, in which case nothing changes: a replayed commit pays nobody twice.
    pub fn commit_bandit_round(
        &self,
        federation: &str,
        round: &RoundRecord,
        aggregate: &[f64],
        ledger: &[LedgerEntry],
        fed: &FederationRecord,
    ) -> Result<(), StoreError> {
        let batch = with_new_record(Batch::new(), keys::round(federation, round.round), round)?
            .put(bkeys::aggregate(federation), to_bytes(aggregate));
        let batch = ledger::with_ledger(batch, ledger, fed)?;
        self.kv
            .commit(with_record(batch, keys::federation(federation), fed)?)
    }

    /// The aggregate committed with the last round, `[V_g, b_g]`; `None` before the first.
    pub fn get_bandit_aggregate(&self, federation: &str) -> Result<Option<Vec<f64>>, StoreError> {
        let key = bkeys::aggregate(federation);
        self.kv
            .get(&key)?
            .map(|bytes| from_bytes(&key, &bytes))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{LedgerKind, ValuationStatus};

    fn fed_record(store: &Store) -> FederationRecord {
        let config: crate::config::FederationConfig = toml::from_str(
            r#"
            id = "b/1"
            enrollment_secret = "s"
            min_clients = 2
            bandit = { dim = 2, horizon = 10 }
            "#,
        )
        .expect("parses");
        let rec = FederationRecord {
            config,
            status: crate::store::FederationStatus::Running,
            committed_rounds: 0,
            model_version: 0,
            rffl: None,
            fair_reward: None,
        };
        store.create_federation(&rec, &[]).expect("created");
        rec
    }

    fn step(t: u64, triggered: bool) -> BanditStepRecord {
        BanditStepRecord {
            client_id: "client-0001".into(),
            step: t,
            reward: 0.1 + 0.2,
            trigger_statistic: 1.0 / 3.0,
            triggered,
            skipped: false,
        }
    }

    #[test]
    fn skipped_steps_round_trip_and_old_steps_decode_as_played() {
        let old =
            r#"{"client_id":"a","step":3,"reward":0.5,"trigger_statistic":1.0,"triggered":false}"#;
        let played: BanditStepRecord = serde_json::from_str(old).expect("decodes");
        assert!(!played.skipped);
        assert_eq!(
            serde_json::to_string(&played).expect("encodes"),
            old,
            "a played step is stored as before"
        );
        let store = Store::memory();
        store.put_bandit_step("b/1", &step(1, false)).expect("1");
        let skipped = BanditStepRecord::skipped("client-0002".into(), 2);
        store.put_bandit_step("b/1", &skipped).expect("2");
        assert_eq!(
            store.last_bandit_step("b/1").expect("read"),
            Some(skipped.clone())
        );
        assert_eq!(
            store.get_bandit_step("b/1", 2).expect("read"),
            Some(skipped)
        );
    }

    #[test]
    fn steps_reports_uploads_and_syncs_round_trip_bit_for_bit() {
        let store = Store::memory();
        assert_eq!(store.last_bandit_step("b/1").expect("read"), None);
        store.put_bandit_step("b/1", &step(1, false)).expect("1");
        store.put_bandit_step("b/1", &step(2, true)).expect("2");
        assert!(matches!(
            store.put_bandit_step("b/1", &step(2, false)),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(
            store.last_bandit_step("b/1").expect("read"),
            Some(step(2, true))
        );
        assert_eq!(
            store.get_bandit_step("b/1", 1).expect("read"),
            Some(step(1, false))
        );

        let report = BanditReport {
            cost: 0.7,
            gram_update: vec![1.0 / 3.0, f64::MIN_POSITIVE, f64::MIN_POSITIVE, 2.5e-300],
        };
        store
            .put_bandit_report("b/1", 1, "c/2", &report)
            .expect("report");
        assert!(matches!(
            store.put_bandit_report("b/1", 1, "c/2", &report),
            Err(StoreError::Conflict { .. })
        ));
        store
            .put_bandit_report("b/1", 2, "a", &report)
            .expect("other round");
        assert_eq!(
            store.list_bandit_reports("b/1", 1).expect("list"),
            vec![("c/2".to_string(), report.clone())]
        );
        store
            .put_bandit_upload("b/1", 1, "c/2", &[0.1, -7.0])
            .expect("upload");
        assert_eq!(
            store.list_bandit_uploads("b/1", 1).expect("list"),
            vec![("c/2".to_string(), vec![0.1, -7.0])]
        );
        store.put_bandit_synced("b/1", "a", 1).expect("sync");
        store.put_bandit_synced("b/1", "a", 2).expect("sync");
        store.put_bandit_synced("b/1", "c/2", 1).expect("sync");
        assert_eq!(
            store.list_bandit_synced("b/1").expect("list"),
            vec![("a".to_string(), 2), ("c/2".to_string(), 1)]
        );
    }

    #[test]
    fn a_round_commit_is_atomic_and_a_replay_pays_nobody_twice() {
        let store = Store::memory();
        let mut after = fed_record(&store);
        after.committed_rounds = 1;
        let round = RoundRecord {
            bandit: Some(BanditRound {
                step: 4,
                trigger_client: "a".into(),
                selected: vec!["b".into()],
                value: 1.5,
                target: 1.25,
                reports: vec![ClientBanditReport {
                    client_id: "b".into(),
                    reported_cost: 0.5,
                    selected: true,
                    payment: 0.75,
                    capped: false,
                    gain: 0.25,
                }],
                trigger_statistic: Some(1.0 / 3.0),
                void_reason: None,
            }),
            ..RoundRecord::committed(1, 0, vec!["b".into()], vec![], vec![], false)
        };
        assert_eq!(round.valuation_status, ValuationStatus::Skipped);
        let entry = LedgerEntry {
            federation: "b/1".into(),
            round: 1,
            client_id: "b".into(),
            kind: LedgerKind::Payment,
            amount: 0.75,
            mechanism: "truth_fedban".into(),
            inputs: BTreeMap::from([("reported_cost".to_string(), 0.5)]),
            recorded_at_ms: 1,
        };
        let aggregate = [1.0, 0.5, 0.5, 2.0, 0.25, -0.25];
        let mut bad = entry.clone();
        bad.amount = f64::INFINITY;
        assert!(
            store
                .commit_bandit_round("b/1", &round, &aggregate, &[bad], &after)
                .is_err()
        );
        assert_eq!(store.get_bandit_aggregate("b/1").expect("read"), None);
        assert_eq!(store.get_round("b/1", 1).expect("read"), None);

        store
            .commit_bandit_round(
                "b/1",
                &round,
                &aggregate,
                std::slice::from_ref(&entry),
                &after,
            )
            .expect("commit");
        let stored = store.get_round("b/1", 1).expect("read").expect("committed");
        assert_eq!(
            (&stored.bandit, &stored.participants),
            (&round.bandit, &round.participants)
        );
        assert_eq!(
            store.get_bandit_aggregate("b/1").expect("read"),
            Some(aggregate.to_vec())
        );
        assert_eq!(
            store
                .get_federation("b/1")
                .expect("read")
                .map(|f| f.committed_rounds),
            Some(1)
        );
        // A replay (even one computed later) is refused and writes nothing.
        let mut later = entry.clone();
        later.recorded_at_ms = 99;
        assert!(matches!(
            store.commit_bandit_round("b/1", &round, &[0.0; 6], &[later.clone()], &after),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.list_ledger("b/1").expect("ledger"), vec![entry]);
        assert_eq!(store.record_ledger(&[later], None).expect("replay"), 0);
        assert_eq!(
            store.get_bandit_aggregate("b/1").expect("read"),
            Some(aggregate.to_vec())
        );
    }

    #[test]
    fn rounds_recorded_before_trigger_verification_still_decode() {
        let old = r#"{"step":4,"trigger_client":"a","selected":["b"],"value":1.5,"target":1.25,"reports":[]}"#;
        let round: BanditRound = serde_json::from_str(old).expect("decodes");
        assert_eq!((round.trigger_statistic, round.void_reason), (None, None));
        let void = BanditRound {
            trigger_statistic: Some(0.1 + 0.2),
            void_reason: Some("the trigger client did not report".into()),
            ..round
        };
        let json = serde_json::to_string(&void).expect("encodes");
        assert_eq!(
            serde_json::from_str::<BanditRound>(&json).expect("decodes"),
            void
        );
    }

    #[test]
    fn corrupt_vectors_name_their_key() {
        let err = from_bytes(b"bagg/x", &[0; 7]).expect_err("7 bytes");
        assert!(err.to_string().contains("bagg/x"), "{err}");
        assert!(decode_report(b"breport/x", &[]).is_err());
    }
}
