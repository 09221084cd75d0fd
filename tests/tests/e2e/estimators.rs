//! Every configurable estimator values real federation rounds over gRPC, and valuation
//! lags behind training by at most `max_lag_rounds` rounds.

use std::collections::BTreeSet;

use fedval_client::{FederationClient, ModelTrainer, RunOptions, connect, run_node};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;

use super::support::*;

/// Runs a 3-round federation of 4 clients valued with `method`; returns its rounds and
/// the event order.
async fn federation_valued_with(
    url: &str,
    id: &'static str,
    method: &str,
    max_lag_rounds: u64,
) -> (Vec<pb::RoundRecord>, Vec<pb::federation_event::Kind>) {
    let (config, prepared) = digits(4, 5);
    let mut wire = digits_federation(id, 3, &config, &prepared);
    let valuation = wire.valuation.as_mut().expect("valuation");
    valuation.method = method.into();
    valuation.budget = 200;
    valuation.max_lag_rounds = Some(max_lag_rounds);
    valuation.metric = "neg_log_loss".into();
    let mut admin = admin(url).await;
    create_federation(&mut admin, wire).await;
    let mut events = watch(&mut admin, id).await;
    let mut nodes = Vec::new();
    for (i, plan) in prepared.clients.iter().cloned().enumerate() {
        let url = url.to_string();
        nodes.push(tokio::spawn(async move {
            let channel = connect(&url).await?;
            let mut client =
                FederationClient::enroll(channel, id, SECRET, &plan.name, plan.data.len() as u64)
                    .await?;
            let trainer = ModelTrainer::new(client.model().clone(), plan.data, 50 + i as u64)?;
            run_node(&mut client, trainer, &RunOptions::default()).await
        }));
    }
    let mut order = Vec::new();
    while let Some(event) = events.message().await.expect("events") {
        let Some(kind) = event.kind else { continue };
        let ended = matches!(kind, pb::federation_event::Kind::Ended(_));
        order.push(kind);
        if ended {
            break;
        }
    }
    for node in nodes {
        node.await.expect("task").expect("node finishes");
    }
    (list_rounds(&mut admin, id).await, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_estimator_values_live_rounds() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let methods: [(&'static str, &str, bool); 6] = [
        ("m-gtg", "gtg", true),
        ("m-stratified", "stratified_svarm_plus", false),
        ("m-tmc", "tmc", true),
        ("m-svarm", "svarm", false),
        ("m-banzhaf", "banzhaf", false),
        ("m-beta", "beta_shapley", false),
    ];
    let runs = methods.map(|(id, method, _)| federation_valued_with(&url, id, method, 1));
    let results = futures::future::join_all(runs).await;
    for ((_, method, efficient), (rounds, _)) in methods.iter().zip(results) {
        assert_eq!(rounds.len(), 3, "{method}");
        for r in &rounds {
            assert_eq!(r.valuation_status, "done", "{method}: round {}", r.round);
            assert!(
                r.valuation_method.starts_with(method),
                "{method}: {}",
                r.valuation_method
            );
            assert_eq!(r.values.len(), 4, "{method}: every participant has a value");
            assert!(
                r.evaluations >= 1 && r.evaluations <= 200,
                "{method}: {} evaluations",
                r.evaluations
            );
            assert!(!r.valuation_stop.is_empty());
            assert!(
                r.values
                    .iter()
                    .all(|v| v.value.is_finite() && v.std_error.is_finite())
            );
            if *efficient {
                // Permutation walks without truncation firing add up to v(N) - v(empty);
                // with truncation, the truncated marginals (<= tolerance) are dropped.
                let sum: f64 = r.values.iter().map(|v| v.value).sum();
                let gain = r.utility_full - r.utility_empty;
                assert!(
                    (sum - gain).abs() <= 0.05 * gain.abs().max(1e-3),
                    "{method}: {sum} vs {gain}"
                );
            }
        }
    }
    server.shutdown().await.expect("graceful shutdown");
}

/// Rounds valued before round `k` started, for each started round `k`.
fn valued_before_each_start(order: &[pb::federation_event::Kind]) -> Vec<(u64, BTreeSet<u64>)> {
    let mut valued = BTreeSet::new();
    let mut starts = Vec::new();
    for kind in order {
        match kind {
            pb::federation_event::Kind::RoundValued(r) => {
                valued.insert(r.round);
            }
            pb::federation_event::Kind::RoundStarted(s) => starts.push((s.round, valued.clone())),
            _ => {}
        }
    }
    starts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valuation_lags_training_by_at_most_the_configured_rounds() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    for (id, lag) in [("lag0", 0u64), ("lag1", 1)] {
        let (rounds, order) = federation_valued_with(&url, id, "exact", lag).await;
        assert!(rounds.iter().all(|r| r.valuation_status == "done"));
        for (round, valued) in valued_before_each_start(&order) {
            for earlier in 1..round.saturating_sub(lag) {
                assert!(
                    valued.contains(&earlier),
                    "{id}: round {round} opened before round {earlier} was valued"
                );
            }
        }
        // The federation ends only once every round is valued.
        let last_valued = order
            .iter()
            .rposition(|k| matches!(k, pb::federation_event::Kind::RoundValued(_)));
        let ended = order
            .iter()
            .position(|k| matches!(k, pb::federation_event::Kind::Ended(_)));
        assert!(last_valued < ended, "{id}: ended before the last valuation");
    }
    server.shutdown().await.expect("graceful shutdown");
}
