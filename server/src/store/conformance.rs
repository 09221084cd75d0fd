//! The one conformance suite every backend must pass, run against memory, redb and (with
//! the `sled` feature) sled. Each case is a plain function of a fresh [`Store`]; the macro
//! at the bottom instantiates them per backend. Durable backends also run the reopen case,
//! which drops the store and opens the same directory again, as after a crash or restart.

use std::path::Path;

use tempfile::TempDir;

use super::*;
use crate::config::{FederationConfig, TrainingParams, ValuationConfig, ValuationMethod};
use fedval_core::model::ModelSpec;

/// A fresh store, with the directory it lives in (if any) kept alive beside it.
pub struct Fixture {
    /// The store under test.
    pub store: Store,
    _dir: Option<TempDir>,
}

/// A fresh in-memory store.
pub fn memory() -> Fixture {
    Fixture {
        store: Store::memory(),
        _dir: None,
    }
}

/// A fresh store opened by `open` in a new temporary directory.
pub fn on_disk(open: fn(&Path) -> Result<Store, StoreError>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    Fixture {
        store: open(dir.path()).expect("opens"),
        _dir: Some(dir),
    }
}

fn fed(id: &str) -> FederationRecord {
    FederationRecord {
        config: FederationConfig {
            id: id.to_string(),
            enrollment_secret: "secret".into(),
            model: Some(ModelSpec::LogisticRegression {
                num_features: 2,
                num_classes: 2,
            }),
            rounds: 3,
            min_clients: 1,
            clients_per_round: 0,
            round_timeout_ms: 1000,
            training: TrainingParams::default(),
            valuation: ValuationConfig {
                method: ValuationMethod::None,
                ..ValuationConfig::default()
            },
            aggregator: Default::default(),
            validation: None,
            seed: 1,
            reputation: None,
            fair_reward: None,
            vertical: None,
            fact: None,
            bandit: None,
        },
        status: FederationStatus::Waiting,
        committed_rounds: 0,
        model_version: 0,
        rffl: None,
        fair_reward: None,
    }
}

fn client(name: &str, seq: u64) -> ClientRecord {
    ClientRecord {
        client_id: format!("c{seq}"),
        name: name.to_string(),
        token_hash: crate::auth::hash_token(name),
        num_samples: 10 * seq,
        enrolled_at_ms: 1000 + seq,
        seq,
        cost_per_point: None,
    }
}

fn update(client_id: &str, round: u64) -> UpdateRecord {
    UpdateRecord {
        client_id: client_id.to_string(),
        round,
        model_version: round,
        num_samples: 5,
        metrics: vec![("loss".into(), 0.25), ("accuracy".into(), 0.5)],
        sha256: "ab".repeat(32),
        received_at_ms: 42,
    }
}

fn round_record(round: u64, model_version: u64, participants: &[&str]) -> RoundRecord {
    RoundRecord {
        round,
        model_version,
        participants: participants.iter().map(|s| s.to_string()).collect(),
        stragglers: vec!["late".into()],
        metrics: vec![("accuracy".into(), 0.75), ("loss".into(), f64::INFINITY)],
        values: participants
            .iter()
            .map(|p| ClientValue {
                client_id: p.to_string(),
                value: 0.125,
                std_error: 0.0,
            })
            .collect(),
        valuation_method: "exact".into(),
        evaluations: 4,
        utility_full: 0.75,
        utility_empty: 0.5,
        valuation_ms: 3,
        valuation_status: ValuationStatus::Done,
        reputations: Vec::new(),
        reputation_threshold: None,
        fair_reward: None,
        bandit: None,
        valuation_stop: "exact".into(),
    }
}

fn assert_conflict(result: Result<(), StoreError>, key_part: &str) {
    match result {
        Err(StoreError::Conflict { key }) => assert!(key.contains(key_part), "{key}"),
        other => panic!("expected a conflict on {key_part}, got {other:?}"),
    }
}

/// Create, get, list and overwrite federations; the initial model is version 0.
pub fn federations(s: &Store) {
    assert_eq!(s.list_federations().expect("list"), vec![]);
    assert_eq!(s.get_federation("b").expect("get"), None);
    s.create_federation(&fed("b"), &[1.0, 2.0])
        .expect("create b");
    s.create_federation(&fed("a"), &[3.0]).expect("create a");
    s.create_federation(&fed("a-b"), &[]).expect("create a-b");
    assert_eq!(s.get_federation("b").expect("get"), Some(fed("b")));
    let ids: Vec<String> = s
        .list_federations()
        .expect("list")
        .into_iter()
        .map(|r| r.config.id)
        .collect();
    assert_eq!(ids, ["a", "a-b", "b"]);
    assert_eq!(s.get_model("b", 0).expect("model"), Some(vec![1.0, 2.0]));
    assert_eq!(s.get_model("a-b", 0).expect("model"), Some(vec![]));
    assert_eq!(s.get_model("b", 1).expect("model"), None);
    assert_eq!(s.get_model("c", 0).expect("model"), None);

    let mut running = fed("b");
    running.status = FederationStatus::Running;
    s.put_federation(&running).expect("put");
    assert_eq!(s.get_federation("b").expect("get"), Some(running));
}

/// A second federation with the same id conflicts and changes nothing.
pub fn duplicate_federation(s: &Store) {
    s.create_federation(&fed("a"), &[1.0]).expect("create");
    let mut other = fed("a");
    other.config.rounds = 99;
    assert_conflict(s.create_federation(&other, &[2.0]), "fed/a");
    assert_eq!(s.get_federation("a").expect("get"), Some(fed("a")));
    assert_eq!(s.get_model("a", 0).expect("model"), Some(vec![1.0]));
}

/// Clients list in numeric `seq` order; a taken name or seq conflicts and changes nothing.
pub fn clients(s: &Store) {
    assert_eq!(s.list_clients("f").expect("list"), vec![]);
    // seq 9 before seq 10: numeric, not lexicographic, order.
    let enrolled = [client("zeta", 9), client("alpha/β", 10), client("mid", 11)];
    for c in &enrolled {
        s.add_client("f", c).expect("add");
    }
    s.add_client("f2", &client("zeta", 0))
        .expect("same name, other federation");
    assert_eq!(s.list_clients("f").expect("list"), enrolled.to_vec());
    assert_conflict(s.add_client("f", &client("mid", 12)), "client-name/f/mid");
    assert_conflict(s.add_client("f", &client("new", 11)), "client/f/");
    assert_eq!(s.list_clients("f").expect("list"), enrolled.to_vec());
    assert_eq!(s.list_clients("f2").expect("list"), vec![client("zeta", 0)]);
}

/// Updates list by client id per round; a duplicate (round, client) conflicts, the first stays.
pub fn updates(s: &Store) {
    for id in ["c", "a", "b"] {
        s.put_update("f", &update(id, 2), &[id.len() as f32, 2.0])
            .expect("put");
    }
    s.put_update("f", &update("a", 10), &[7.0])
        .expect("round 10");
    s.put_update("g", &update("a", 2), &[8.0])
        .expect("other federation");
    let got = s.list_updates("f", 2).expect("list");
    let ids: Vec<&str> = got.iter().map(|(r, _)| r.client_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(got[0], (update("a", 2), vec![1.0, 2.0]));

    let mut dup = update("b", 2);
    dup.num_samples = 999;
    assert_conflict(s.put_update("f", &dup, &[9.0]), "update/f/");
    let again = s.list_updates("f", 2).expect("list");
    assert_eq!(again, got, "the first upload is intact");

    assert_eq!(
        s.list_updates("f", 10).expect("list"),
        vec![(update("a", 10), vec![7.0])]
    );
    assert_eq!(s.list_updates("f", 3).expect("list"), vec![]);
}

/// A round commit writes round, model and federation together; a replay changes nothing.
pub fn commit_round(s: &Store) {
    s.create_federation(&fed("f"), &[0.0, 0.0]).expect("create");
    let mut after = fed("f");
    after.status = FederationStatus::Running;
    after.committed_rounds = 1;
    after.model_version = 1;
    let r0 = round_record(0, 1, &["a", "b"]);
    s.commit_round("f", &r0, &[0.5, -0.5], &[], &[], &after)
        .expect("commit");
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r0.clone()]);
    assert_eq!(s.get_model("f", 1).expect("model"), Some(vec![0.5, -0.5]));
    assert_eq!(s.get_federation("f").expect("get"), Some(after.clone()));

    let mut replay = after.clone();
    replay.committed_rounds = 2;
    replay.model_version = 2;
    let r0b = round_record(0, 2, &["c"]);
    assert_conflict(
        s.commit_round("f", &r0b, &[9.0, 9.0], &[], &[], &replay),
        "round/f/",
    );
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r0.clone()]);
    assert_eq!(s.get_model("f", 2).expect("model"), None, "nothing written");
    assert_eq!(s.get_federation("f").expect("get"), Some(after));

    // Rounds list in numeric order whatever the commit order.
    let r10 = round_record(10, 11, &["a"]);
    let r2 = round_record(2, 3, &["b"]);
    s.commit_round("f", &r10, &[1.0, 1.0], &[], &[], &fed("f"))
        .expect("commit 10");
    s.commit_round("f", &r2, &[2.0, 2.0], &[], &[], &fed("f"))
        .expect("commit 2");
    assert_eq!(s.get_round("f", 10).expect("read"), Some(r10.clone()));
    assert_eq!(s.get_round("f", 3).expect("read"), None);
    assert_eq!(s.get_round("g", 10).expect("read"), None);
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r0, r2, r10]);
    assert_eq!(s.list_rounds("g").expect("rounds"), vec![]);
}

/// Client models and the reward policies' states are committed with the round, or not
/// at all.
pub fn commit_round_with_client_models(s: &Store) {
    s.create_federation(&fed("f"), &[0.0, 0.0]).expect("create");
    let mut after = fed("f");
    after.committed_rounds = 1;
    after.model_version = 1;
    after.rffl = Some(fedval_core::reputation::RfflState::new(&[3, 1]).expect("state"));
    let mut fair = fedval_core::reputation::FairRewardState::new(2).expect("state");
    fair.psi = vec![0.25, -0.125];
    fair.recent = vec![vec![0.25, -0.125]];
    fair.rounds = 1;
    after.fair_reward = Some(fair);
    let mut r0 = round_record(0, 1, &["a/1", "b"]);
    r0.fair_reward = Some(crate::store::FairRewardRound {
        exploring: true,
        p_value: None,
        clients: vec![crate::store::ClientFairReward {
            client_id: "a/1".into(),
            psi: 0.25,
            received_model: true,
            probability: None,
        }],
    });
    let models: [(String, &[f32]); 2] = [("a/1".into(), &[1.0, 2.0]), ("b".into(), &[-3.0, 0.5])];
    s.commit_round("f", &r0, &[0.5, 0.5], &models, &[], &after)
        .expect("commit");
    assert_eq!(
        s.get_client_model("f", "a/1", 1).expect("a"),
        Some(vec![1.0, 2.0])
    );
    assert_eq!(
        s.get_client_model("f", "b", 1).expect("b"),
        Some(vec![-3.0, 0.5])
    );
    assert_eq!(s.get_client_model("f", "b", 0).expect("b0"), None);
    assert_eq!(s.get_client_model("g", "b", 1).expect("other fed"), None);
    assert_eq!(s.get_federation("f").expect("get"), Some(after.clone()));
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r0]);
    // A replayed commit writes none of its client models.
    let r0b = round_record(0, 2, &["b"]);
    let replay: [(String, &[f32]); 1] = [("b".into(), &[9.0, 9.0])];
    assert_conflict(
        s.commit_round("f", &r0b, &[9.0, 9.0], &replay, &[], &after),
        "round/f/",
    );
    assert_eq!(s.get_client_model("f", "b", 2).expect("b2"), None);
}

/// A round's ledger entries are committed with the round or not at all: a replayed
/// round commit writes none of its entries, an invalid entry fails the whole commit and
/// an entry of the round already stored makes the commit conflict.
pub fn commit_round_with_ledger(s: &Store) {
    s.create_federation(&fed("f"), &[0.0]).expect("create");
    let mut after = fed("f");
    after.committed_rounds = 1;
    after.model_version = 1;
    let r1 = round_record(1, 1, &["a", "b"]);
    let entries = [
        entry("f", 1, "b", LedgerKind::Penalty, 0.5),
        entry("f", 1, "a", LedgerKind::Penalty, 0.25),
        entry("f", 1, "a", LedgerKind::Prize, 2.0),
    ];
    let mut bad = entries.clone();
    bad[1].amount = f64::NAN;
    match s.commit_round("f", &r1, &[1.0], &[], &bad, &after) {
        Err(StoreError::InvalidLedgerEntry { reason, .. }) => {
            assert!(reason.contains("NaN"), "{reason}")
        }
        other => panic!("expected an invalid entry, got {other:?}"),
    }
    assert_eq!(
        s.list_rounds("f").expect("rounds"),
        vec![],
        "nothing written"
    );
    s.commit_round("f", &r1, &[1.0], &[], &entries, &after)
        .expect("commit");
    let mut sorted = entries.to_vec();
    sorted.sort_by(|x, y| (&x.client_id, x.kind).cmp(&(&y.client_id, y.kind)));
    assert_eq!(s.list_ledger("f").expect("ledger"), sorted);
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r1.clone()]);
    // The same round again: refused, its (different) entries not written.
    let mut other = entries.clone();
    other[0].amount = 9.0;
    assert_conflict(
        s.commit_round("f", &r1, &[2.0], &[], &other, &after),
        "round/f/",
    );
    assert_eq!(s.list_ledger("f").expect("ledger"), sorted);
    assert_eq!(s.list_round_ledger("f", 1).expect("round 1"), sorted);
    // A stored entry of a round not yet committed makes that round's commit conflict.
    let early = entry("f", 2, "a", LedgerKind::Prize, 1.0);
    assert_eq!(
        s.record_ledger(std::slice::from_ref(&early), None)
            .expect("record"),
        1
    );
    assert_eq!(
        s.list_round_ledger("f", 2).expect("round 2"),
        vec![early.clone()]
    );
    assert_eq!(s.list_round_ledger("f", 1).expect("round 1"), sorted);
    let r2 = round_record(2, 2, &["a"]);
    assert_conflict(
        s.commit_round("f", &r2, &[3.0], &[], &[early], &after),
        "ledger/f/",
    );
    assert_eq!(s.get_round("f", 2).expect("read"), None);
}

/// Vertical embeddings list per round by client id; a party's second send conflicts and
/// the first stays; a vertical round commit writes round, bias, gradients and federation
/// together, a replay changes nothing; `update_rounds` rewrites records and the
/// federation in one batch.
pub fn vertical_rounds(s: &Store) {
    for id in ["c/2", "a", "b"] {
        s.put_embeddings("f", 1, id, &[id.len() as f32, 0.5])
            .expect("put");
    }
    s.put_embeddings("f", 2, "a", &[9.0]).expect("round 2");
    s.put_embeddings("g", 1, "a", &[8.0])
        .expect("other federation");
    assert_conflict(s.put_embeddings("f", 1, "a", &[7.0, 7.0]), "vembed/f/");
    let got = s.list_embeddings("f", 1).expect("list");
    assert_eq!(
        got,
        vec![
            ("a".to_string(), vec![1.0, 0.5]),
            ("b".to_string(), vec![1.0, 0.5]),
            ("c/2".to_string(), vec![3.0, 0.5]),
        ]
    );
    assert_eq!(s.list_embeddings("f", 3).expect("list"), vec![]);

    s.create_federation(&fed("f"), &[0.0]).expect("create");
    let mut after = fed("f");
    after.committed_rounds = 1;
    after.model_version = 1;
    let r1 = round_record(1, 1, &["a", "b"]);
    s.commit_vertical_round("f", &r1, &[0.25], &[1.0, -2.0], &after)
        .expect("commit");
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r1.clone()]);
    assert_eq!(s.get_model("f", 1).expect("bias"), Some(vec![0.25]));
    assert_eq!(
        s.get_gradients("f", 1).expect("gradients"),
        Some(vec![1.0, -2.0])
    );
    assert_eq!(s.get_gradients("f", 2).expect("gradients"), None);
    assert_eq!(s.get_federation("f").expect("get"), Some(after.clone()));
    let mut replay = after.clone();
    replay.committed_rounds = 2;
    assert_conflict(
        s.commit_vertical_round("f", &r1, &[9.0], &[9.0, 9.0], &replay),
        "round/f/",
    );
    assert_eq!(
        s.get_gradients("f", 1).expect("gradients"),
        Some(vec![1.0, -2.0])
    );
    assert_eq!(s.get_federation("f").expect("get"), Some(after.clone()));

    let mut valued = r1.clone();
    valued.valuation_method = "verfedsv".into();
    let mut finished = after;
    finished.status = FederationStatus::Finished;
    s.update_rounds("f", std::slice::from_ref(&valued), &finished)
        .expect("update");
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![valued]);
    assert_eq!(s.get_federation("f").expect("get"), Some(finished));
}

/// Writes through one store, drops it, reopens the directory and finds everything.
pub fn reopen(open: fn(&Path) -> Result<Store, StoreError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut after = fed("f");
    after.committed_rounds = 1;
    after.model_version = 1;
    let r0 = round_record(0, 1, &["c1"]);
    {
        let s = open(dir.path()).expect("opens");
        s.create_federation(&fed("f"), &[1.0, 2.0]).expect("create");
        s.add_client("f", &client("one", 1)).expect("add");
        s.put_update("f", &update("c1", 0), &[0.25, 0.5])
            .expect("put");
        s.commit_round("f", &r0, &[1.25, 2.5], &[], &[], &after)
            .expect("commit");
        s.put_update("f", &update("c1", 1), &[3.0, 4.0])
            .expect("put round 1");
    }
    let s = open(dir.path()).expect("reopens");
    assert_eq!(s.get_federation("f").expect("get"), Some(after.clone()));
    assert_eq!(
        s.list_clients("f").expect("clients"),
        vec![client("one", 1)]
    );
    assert_eq!(s.get_model("f", 0).expect("m0"), Some(vec![1.0, 2.0]));
    assert_eq!(s.get_model("f", 1).expect("m1"), Some(vec![1.25, 2.5]));
    assert_eq!(s.list_rounds("f").expect("rounds"), vec![r0.clone()]);
    assert_eq!(
        s.list_updates("f", 1).expect("updates"),
        vec![(update("c1", 1), vec![3.0, 4.0])]
    );
    // Uniqueness survives the restart too.
    assert_conflict(
        s.commit_round("f", &r0, &[0.0, 0.0], &[], &[], &after),
        "round/f/",
    );
    assert_conflict(s.put_update("f", &update("c1", 1), &[0.0]), "update/f/");
    assert_conflict(s.add_client("f", &client("one", 2)), "client-name/f/one");
}

fn entry(fed: &str, round: u64, client_id: &str, kind: LedgerKind, amount: f64) -> LedgerEntry {
    LedgerEntry {
        federation: fed.to_string(),
        round,
        client_id: client_id.to_string(),
        kind,
        amount,
        mechanism: "fact".into(),
        inputs: [("m_star".to_string(), 12.5), ("cost".to_string(), 0.25)]
            .into_iter()
            .collect(),
        recorded_at_ms: 1000 + round,
    }
}

fn assert_ledger_conflict(result: Result<usize, StoreError>, key_part: &str) {
    match result {
        Err(StoreError::LedgerConflict { key, .. }) => assert!(key.contains(key_part), "{key}"),
        other => panic!("expected a ledger conflict on {key_part}, got {other:?}"),
    }
}

/// Recording a batch writes every entry and the federation together; replaying it (even
/// with later timestamps) writes nothing and returns 0; an overlapping batch writes only
/// its new entries.
pub fn ledger_replay(s: &Store) {
    s.create_federation(&fed("f"), &[0.0]).expect("create");
    let mut after = fed("f");
    after.committed_rounds = 1;
    let batch = [
        entry("f", 1, "a", LedgerKind::Payment, 3.0),
        entry("f", 1, "a", LedgerKind::Penalty, 0.5),
        entry("f", 1, "b", LedgerKind::Prize, 2.0),
    ];
    assert_eq!(s.record_ledger(&batch, Some(&after)).expect("record"), 3);
    assert_eq!(s.list_ledger("f").expect("list"), batch.to_vec());
    assert_eq!(s.get_federation("f").expect("get"), Some(after.clone()));

    let mut later = batch.clone();
    for e in &mut later {
        e.recorded_at_ms += 500;
    }
    let mut replayed_fed = after.clone();
    replayed_fed.committed_rounds = 7;
    assert_eq!(
        s.record_ledger(&later, Some(&replayed_fed))
            .expect("replay"),
        0
    );
    assert_eq!(
        s.list_ledger("f").expect("list"),
        batch.to_vec(),
        "first kept"
    );
    assert_eq!(
        s.get_federation("f").expect("get"),
        Some(after),
        "a full replay writes nothing, not even the federation"
    );

    // Overlap: one old entry, one new, and a duplicate of the new one in the same batch.
    let overlap = [
        batch[0].clone(),
        entry("f", 2, "a", LedgerKind::Payment, 1.0),
        entry("f", 2, "a", LedgerKind::Payment, 1.0),
    ];
    assert_eq!(s.record_ledger(&overlap, None).expect("overlap"), 1);
    assert_eq!(s.list_ledger("f").expect("list").len(), 4);
    assert_eq!(s.record_ledger(&[], None).expect("empty"), 0);
}

/// A different amount, mechanism or inputs under a stored key is a conflict; a batch with
/// one conflicting or one invalid entry writes none of its entries.
pub fn ledger_conflict(s: &Store) {
    let first = entry("f", 1, "a/1", LedgerKind::Payment, 3.0);
    s.record_ledger(std::slice::from_ref(&first), None)
        .expect("record");
    let mut amount = first.clone();
    amount.amount = 4.0;
    let mut mechanism = first.clone();
    mechanism.mechanism = "truth_fedban".into();
    let mut inputs = first.clone();
    inputs.inputs.insert("cost".into(), 0.5);
    for changed in [amount.clone(), mechanism, inputs] {
        let fresh = entry("f", 1, "b", LedgerKind::Payment, 1.0);
        assert_ledger_conflict(
            s.record_ledger(&[fresh, changed], None),
            "ledger/f/00000000000000000001/a%2F1/payment",
        );
    }
    let err = s
        .record_ledger(std::slice::from_ref(&amount), None)
        .expect_err("conflict");
    assert!(err.to_string().contains("amount 4 != stored 3"), "{err}");
    // Two different entries under one key in the same batch.
    let twin = entry("f", 5, "c", LedgerKind::Prize, 1.0);
    let mut other_twin = twin.clone();
    other_twin.amount = 2.0;
    assert_ledger_conflict(s.record_ledger(&[twin, other_twin], None), "/c/prize");
    // Invalid entries are refused with their key and value.
    let mut nan = entry("f", 6, "d", LedgerKind::Penalty, f64::NAN);
    let err = s
        .record_ledger(std::slice::from_ref(&nan), None)
        .expect_err("nan");
    assert!(
        matches!(&err, StoreError::InvalidLedgerEntry { key, reason }
            if key.contains("/d/penalty") && reason.contains("amount NaN")),
        "{err}"
    );
    nan.amount = 1.0;
    nan.inputs.insert("alpha".into(), f64::INFINITY);
    let err = s.record_ledger(&[nan], None).expect_err("inf input");
    assert!(err.to_string().contains("input `alpha` = inf"), "{err}");
    let empty = entry("f", 6, "", LedgerKind::Penalty, 1.0);
    assert!(matches!(
        s.record_ledger(&[empty], None),
        Err(StoreError::InvalidLedgerEntry { .. })
    ));
    let other_fed = entry("g", 6, "d", LedgerKind::Penalty, 1.0);
    let err = s
        .record_ledger(&[other_fed], Some(&fed("f")))
        .expect_err("wrong federation");
    assert!(err.to_string().contains("federation `g`"), "{err}");
    assert_eq!(s.list_ledger("f").expect("list"), vec![first]);
    assert_eq!(s.list_ledger("g").expect("list"), vec![]);
    assert_eq!(s.get_federation("f").expect("get"), None);
}

/// Entries list by (round numerically, client, kind) whatever the order they were
/// recorded in, per federation; totals sum each kind and net = payments + prizes -
/// penalties.
pub fn ledger_order_and_totals(s: &Store) {
    let recorded = [
        entry("f", 10, "a", LedgerKind::Prize, 0.75),
        entry("f", 9, "b", LedgerKind::Payment, 2.0),
        entry("f", 9, "a", LedgerKind::Prize, 1.5),
        entry("f", 9, "a", LedgerKind::Penalty, 0.25),
        entry("f", 9, "a", LedgerKind::Payment, 4.0),
        entry("f-2", 1, "a", LedgerKind::Payment, 100.0),
    ];
    s.record_ledger(&recorded[..3], None).expect("first");
    s.record_ledger(&recorded[3..], None).expect("second");
    let keys: Vec<(u64, String, LedgerKind)> = s
        .list_ledger("f")
        .expect("list")
        .into_iter()
        .map(|e| (e.round, e.client_id, e.kind))
        .collect();
    assert_eq!(
        keys,
        vec![
            (9, "a".into(), LedgerKind::Payment),
            (9, "a".into(), LedgerKind::Penalty),
            (9, "a".into(), LedgerKind::Prize),
            (9, "b".into(), LedgerKind::Payment),
            (10, "a".into(), LedgerKind::Prize),
        ]
    );
    let totals = s.ledger_totals("f").expect("totals");
    assert_eq!(
        totals.into_iter().collect::<Vec<_>>(),
        vec![
            (
                "a".to_string(),
                Totals {
                    payments: 4.0,
                    penalties: 0.25,
                    prizes: 2.25,
                    net: 6.0,
                }
            ),
            (
                "b".to_string(),
                Totals {
                    payments: 2.0,
                    penalties: 0.0,
                    prizes: 0.0,
                    net: 2.0,
                }
            ),
        ]
    );
    assert_eq!(s.list_ledger("f-2").expect("list").len(), 1);
    assert!(s.ledger_totals("none").expect("totals").is_empty());
}

/// A backend whose commits all fail, as if the process died before the batch committed.
struct DiesBeforeCommit(Box<dyn KvBackend>);

impl KvBackend for DiesBeforeCommit {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<kv::Entries, StoreError> {
        self.0.scan_prefix(prefix)
    }
    fn commit(&self, _batch: Batch) -> Result<(), StoreError> {
        Err(StoreError::Backend {
            backend: "test",
            context: "committing".into(),
            source: "killed before commit".into(),
        })
    }
}

/// Crash safety of the ledger on redb: a batch interrupted before its commit leaves
/// nothing; a committed batch is on disk the moment `record_ledger` returns (the file is
/// copied while the store is still open, with no clean shutdown) and replaying it on the
/// reopened copy neither loses nor duplicates an entry.
#[test]
fn redb_ledger_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crashed = tempfile::tempdir().expect("tempdir");
    let batch = [
        entry("f", 3, "a", LedgerKind::Penalty, 1.25),
        entry("f", 3, "b", LedgerKind::Prize, 6.0),
    ];
    let mut after = fed("f");
    after.committed_rounds = 4;
    {
        let dying = Store::with_backend(DiesBeforeCommit(Box::new(
            redb_backend::RedbBackend::open(dir.path()).expect("opens"),
        )));
        dying
            .create_federation(&fed("f"), &[0.0])
            .expect_err("dies");
        assert!(dying.record_ledger(&batch, Some(&after)).is_err());
    }
    let store = Store::open_redb(dir.path()).expect("reopens");
    assert_eq!(
        store.list_ledger("f").expect("list"),
        vec![],
        "nothing half-written"
    );
    store.create_federation(&fed("f"), &[0.0]).expect("create");
    assert_eq!(
        store.record_ledger(&batch, Some(&after)).expect("record"),
        2
    );
    std::fs::copy(
        dir.path().join(redb_backend::FILE_NAME),
        crashed.path().join(redb_backend::FILE_NAME),
    )
    .expect("copy the file as a crash leaves it");
    let reopened = Store::open_redb(crashed.path()).expect("opens the crashed copy");
    assert_eq!(reopened.list_ledger("f").expect("list"), batch.to_vec());
    assert_eq!(
        reopened.get_federation("f").expect("get"),
        Some(after.clone())
    );
    assert_eq!(
        reopened
            .record_ledger(&batch, Some(&after))
            .expect("replay"),
        0
    );
    assert_eq!(reopened.list_ledger("f").expect("list"), batch.to_vec());
    let totals = reopened.ledger_totals("f").expect("totals");
    assert_eq!(totals.get("a").map(|t| t.net), Some(-1.25));
    assert_eq!(totals.get("b").map(|t| t.net), Some(6.0));
}

/// A 50 MB model (12.5 M floats) round-trips bit for bit.
pub fn large_tensor(s: &Store) {
    let n = 12_500_000;
    let model: Vec<f32> = (0..n).map(|i| (i as f32) * 0.5 - 1.0e6).collect();
    s.create_federation(&fed("big"), &model).expect("create");
    let back = s.get_model("big", 0).expect("get").expect("present");
    assert!(back == model, "the 12.5M-float model changed in the store");
}

macro_rules! conformance {
    ($name:ident, $fixture:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn federations() {
                super::federations(&$fixture.store)
            }
            #[test]
            fn duplicate_federation() {
                super::duplicate_federation(&$fixture.store)
            }
            #[test]
            fn clients() {
                super::clients(&$fixture.store)
            }
            #[test]
            fn updates() {
                super::updates(&$fixture.store)
            }
            #[test]
            fn commit_round() {
                super::commit_round(&$fixture.store)
            }
            #[test]
            fn commit_round_with_client_models() {
                super::commit_round_with_client_models(&$fixture.store)
            }
            #[test]
            fn commit_round_with_ledger() {
                super::commit_round_with_ledger(&$fixture.store)
            }
            #[test]
            fn vertical_rounds() {
                super::vertical_rounds(&$fixture.store)
            }
            #[test]
            fn ledger_replay() {
                super::ledger_replay(&$fixture.store)
            }
            #[test]
            fn ledger_conflict() {
                super::ledger_conflict(&$fixture.store)
            }
            #[test]
            fn ledger_order_and_totals() {
                super::ledger_order_and_totals(&$fixture.store)
            }
        }
    };
}

conformance!(memory_backend, memory());
conformance!(redb, on_disk(Store::open_redb));
#[cfg(feature = "sled")]
conformance!(sled, on_disk(Store::open_sled));

#[test]
fn redb_reopen() {
    reopen(Store::open_redb)
}

#[cfg(feature = "sled")]
#[test]
fn sled_reopen() {
    reopen(Store::open_sled)
}

#[test]
fn redb_large_tensor() {
    large_tensor(&on_disk(Store::open_redb).store)
}
