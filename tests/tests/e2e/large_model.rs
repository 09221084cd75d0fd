//! A 50 MB model goes down and a 50 MB update goes up, in bounded chunks, and the update
//! is durable (redb) before it is acknowledged.

use fedval_client::{FederationClient, Task, connect};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_update_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_redb(dir.path()).expect("redb");
    let server = start_server(store.clone()).await;
    let url = server.url();
    // 10 x (1_310_719 + 1) parameters = 13_107_200 floats = 52.4 MB.
    let spec = fedval_core::model::ModelSpec::LogisticRegression {
        num_features: 1_310_719,
        num_classes: 10,
    };
    let params = spec.num_params();
    assert!(params * 4 >= 50_000_000);
    let config = pb::FederationConfig {
        id: "large".into(),
        enrollment_secret: SECRET.into(),
        model: Some((&spec).into()),
        rounds: 1,
        min_clients: 1,
        clients_per_round: 0,
        round_timeout_ms: 120_000,
        training: None,
        valuation: Some(pb::ValuationConfig {
            method: "none".into(),
            ..Default::default()
        }),
        validation: None,
        seed: 1,
        aggregator: None,
        reputation: None,
        fair_reward: None,
        vertical: None,
        fact: None,
        bandit: None,
    };
    let mut admin = admin(&url).await;
    create_federation(&mut admin, config).await;

    let mut client = FederationClient::enroll(
        connect(&url).await.expect("connect"),
        "large",
        SECRET,
        "big",
        1000,
    )
    .await
    .expect("enroll");
    let task = loop {
        match client.pull_task().await.expect("pull") {
            Task::Train(t) => break t,
            Task::Wait { .. } => continue,
            Task::Done { .. } | Task::Removed { .. } => panic!("federation ended early"),
        }
    };
    let global = client
        .download_model(task.model_version)
        .await
        .expect("50 MB download");
    assert_eq!(global.len(), params);
    let delta: Vec<f32> = (0..params).map(|i| ((i % 1000) as f32) * 1e-6).collect();
    let ack = client
        .upload_update(
            task.round,
            task.model_version,
            &delta,
            1000,
            &[("loss".to_string(), 0.5)],
        )
        .await
        .expect("50 MB upload");
    assert!(ack.accepted);
    // Acknowledged means durable: the store holds it bit for bit (or the round has
    // already been committed from it).
    let stored = store.list_updates("large", 1).expect("list");
    if let Some((record, values)) = stored.first() {
        assert_eq!(record.num_samples, 1000);
        assert_eq!(values.len(), params);
        assert_eq!(values[999].to_bits(), delta[999].to_bits());
    } else {
        panic!("the acknowledged update is not in the store");
    }
    server.shutdown().await.expect("graceful shutdown");
}
