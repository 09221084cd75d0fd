//! One server hosts several federations at once: they progress independently, a token
//! of one federation is worthless in another, and stopping one ends only its clients.

use fedval_client::{FederationClient, ModelTrainer, RunOptions, RunSummary, connect, run_node};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use tonic::Code;

use super::support::*;

async fn spawn_nodes(
    url: &str,
    federation: &'static str,
    prepared: &fedval_sim::setup::Prepared,
) -> Vec<tokio::task::JoinHandle<Result<RunSummary, fedval_client::ClientError>>> {
    let mut nodes = Vec::new();
    for (i, plan) in prepared.clients.iter().cloned().enumerate() {
        let url = url.to_string();
        nodes.push(tokio::spawn(async move {
            let channel = connect(&url).await?;
            let mut client = FederationClient::enroll(
                channel,
                federation,
                SECRET,
                &plan.name,
                plan.data.len() as u64,
            )
            .await?;
            let trainer = ModelTrainer::new(client.model().clone(), plan.data, 300 + i as u64)?;
            run_node(&mut client, trainer, &RunOptions::default()).await
        }));
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federations_are_independent_and_can_be_stopped() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let (config, prepared) = digits(3, 21);
    let mut admin = admin(&url).await;
    for (id, rounds) in [("alpha", 3), ("beta", 1000), ("gamma", 1)] {
        create_federation(
            &mut admin,
            digits_federation(id, rounds, &config, &prepared),
        )
        .await;
    }
    let listed = admin
        .list_federations(pb::ListFederationsRequest {})
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<String> = listed
        .federations
        .iter()
        .filter_map(|f| f.config.as_ref().map(|c| c.id.clone()))
        .collect();
    assert_eq!(ids, ["alpha", "beta", "gamma"]);

    // A token of gamma does not open beta.
    let mut raw = raw_coordinator(&url).await;
    let enrolled = raw
        .enroll(enroll_request("gamma", "outsider", 1))
        .await
        .expect("enroll")
        .into_inner();
    let crossed = raw
        .pull_task(with_token(
            pb::PullTaskRequest {
                federation_id: "beta".into(),
                client_id: enrolled.client_id.clone(),
            },
            &enrolled.token,
        ))
        .await
        .expect_err("a token is only valid in its federation");
    assert_eq!(crossed.code(), Code::Unauthenticated);

    let mut beta_events = watch(&mut admin, "beta").await;
    let alpha_nodes = spawn_nodes(&url, "alpha", &prepared).await;
    let beta_nodes = spawn_nodes(&url, "beta", &prepared).await;

    // Let beta commit a round, then stop it.
    while let Some(event) = beta_events.message().await.expect("beta events") {
        if matches!(
            event.kind,
            Some(pb::federation_event::Kind::RoundCommitted(_))
        ) {
            break;
        }
    }
    let stopped = admin
        .stop_federation(pb::StopFederationRequest {
            federation_id: "beta".into(),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.status, "stopped");
    for node in beta_nodes {
        let summary = node
            .await
            .expect("task")
            .expect("beta node ends cleanly when stopped");
        assert!(summary.final_model_version < 1000);
    }
    for node in alpha_nodes {
        let summary = node.await.expect("task").expect("alpha node finishes");
        assert_eq!(summary.final_model_version, 3);
    }
    let alpha = admin
        .get_federation(pb::GetFederationRequest {
            federation_id: "alpha".into(),
        })
        .await
        .expect("alpha")
        .into_inner();
    assert_eq!(
        (alpha.status.as_str(), alpha.committed_rounds),
        ("finished", 3)
    );
    let beta = admin
        .get_federation(pb::GetFederationRequest {
            federation_id: "beta".into(),
        })
        .await
        .expect("beta")
        .into_inner();
    assert_eq!(beta.status, "stopped");
    assert!(beta.committed_rounds >= 1);
    // A stopped federation takes no new clients.
    let late = raw
        .enroll(enroll_request("beta", "late", 1))
        .await
        .expect_err("stopped federations refuse enrollment");
    assert_eq!(late.code(), Code::FailedPrecondition);
    server.shutdown().await.expect("graceful shutdown");
}
