//! The payments ledger over gRPC: entries recorded through the embedded server's store
//! (the test keeps a clone of it) come back from `Admin.ListLedger` in (round, client,
//! kind) order with per-client totals, a replayed batch adds nothing, and malformed or
//! unknown federations get INVALID_ARGUMENT / NOT_FOUND.

use std::collections::BTreeMap;

use fedval_proto::v1 as pb;
use fedval_server::store::{LedgerEntry, LedgerKind, Store};
use tonic::Code;

use super::support::*;

const FED: &str = "ledger";

fn entry(round: u64, client_id: &str, kind: LedgerKind, amount: f64) -> LedgerEntry {
    LedgerEntry {
        federation: FED.into(),
        round,
        client_id: client_id.into(),
        kind,
        amount,
        mechanism: "fact".into(),
        inputs: BTreeMap::from([("m_star".to_string(), 40.0), ("cost".to_string(), 0.5)]),
        recorded_at_ms: 7,
    }
}

async fn list(
    admin: &mut fedval_sim::runner::Admin,
    federation: &str,
    client_id: Option<&str>,
) -> Result<pb::ListLedgerResponse, tonic::Status> {
    admin
        .list_ledger(pb::ListLedgerRequest {
            federation_id: federation.into(),
            client_id: client_id.map(str::to_string),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_ledger_returns_recorded_entries_and_totals() {
    let store = Store::memory();
    let server = start_server(store.clone()).await;
    let url = server.url();
    let (config, prepared) = digits(2, 5);
    let mut wire = digits_federation(FED, 2, &config, &prepared);
    // Nobody enrolls: the federation stays waiting and records no rounds of its own.
    wire.min_clients = 2;
    let mut admin = admin(&url).await;
    admin
        .create_federation(pb::CreateFederationRequest { config: Some(wire) })
        .await
        .expect("create");

    let empty = list(&mut admin, FED, None).await.expect("empty ledger");
    assert_eq!(empty, pb::ListLedgerResponse::default());

    let batch = [
        entry(2, "b", LedgerKind::Prize, 3.0),
        entry(1, "b", LedgerKind::Penalty, 1.5),
        entry(1, "a", LedgerKind::Payment, 2.0),
    ];
    assert_eq!(store.record_ledger(&batch, None).expect("record"), 3);
    assert_eq!(store.record_ledger(&batch, None).expect("replay"), 0);

    let all = list(&mut admin, FED, None).await.expect("ledger");
    let order: Vec<(u64, &str, &str)> = all
        .entries
        .iter()
        .map(|e| (e.round, e.client_id.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        order,
        [(1, "a", "payment"), (1, "b", "penalty"), (2, "b", "prize")]
    );
    let first = &all.entries[0];
    assert_eq!(first.amount, 2.0);
    assert_eq!(first.mechanism, "fact");
    assert_eq!(first.inputs.get("m_star"), Some(&40.0));
    assert_eq!(first.recorded_at_ms, 7);
    assert_eq!(
        all.totals,
        vec![
            pb::LedgerTotals {
                client_id: "a".into(),
                payments: 2.0,
                penalties: 0.0,
                prizes: 0.0,
                net: 2.0,
            },
            pb::LedgerTotals {
                client_id: "b".into(),
                payments: 0.0,
                penalties: 1.5,
                prizes: 3.0,
                net: 1.5,
            },
        ]
    );

    let only_b = list(&mut admin, FED, Some("b")).await.expect("filtered");
    assert_eq!(only_b.entries, all.entries[1..].to_vec());
    assert_eq!(only_b.totals, all.totals[1..].to_vec());
    let nobody = list(&mut admin, FED, Some("zz")).await.expect("filtered");
    assert_eq!(nobody, pb::ListLedgerResponse::default());

    let missing = list(&mut admin, "no-such-federation", None)
        .await
        .expect_err("unknown federation");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(
        missing.message().contains("no-such-federation"),
        "{missing:?}"
    );
    let unnamed = list(&mut admin, "", None).await.expect_err("empty id");
    assert_eq!(unnamed.code(), Code::InvalidArgument, "{unnamed:?}");
    assert!(unnamed.message().contains("federation_id"), "{unnamed:?}");
    let blank = list(&mut admin, FED, Some(""))
        .await
        .expect_err("empty client");
    assert_eq!(blank.code(), Code::InvalidArgument, "{blank:?}");
    assert!(blank.message().contains("client_id"), "{blank:?}");
}
