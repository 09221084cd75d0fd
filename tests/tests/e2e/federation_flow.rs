//! Five clients train digits for five rounds over real gRPC; the server values them
//! exactly every round.

use fedval_client::{FederationClient, ModelTrainer, RunOptions, connect, run_node};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_clients_five_rounds_exact_shapley() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let (config, prepared) = digits(5, 7);
    let mut admin = admin(&url).await;
    create_federation(&mut admin, digits_federation("flow", 5, &config, &prepared)).await;

    let mut nodes = Vec::new();
    for (i, plan) in prepared.clients.iter().cloned().enumerate() {
        let url = url.clone();
        nodes.push(tokio::spawn(async move {
            let channel = connect(&url).await?;
            let mut client = FederationClient::enroll(
                channel,
                "flow",
                SECRET,
                &plan.name,
                plan.data.len() as u64,
            )
            .await?;
            let trainer = ModelTrainer::new(client.model().clone(), plan.data, 100 + i as u64)?;
            run_node(&mut client, trainer, &RunOptions::default()).await
        }));
    }
    for node in nodes {
        let summary = node.await.expect("node task").expect("node finishes");
        assert_eq!(summary.final_model_version, 5);
        assert_eq!(summary.rounds_trained, 5);
    }

    let rounds = list_rounds(&mut admin, "flow").await;
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    for r in &rounds {
        assert_eq!(r.valuation_method, "exact");
        assert_eq!(
            r.participants.len(),
            5,
            "round {}: every client took part",
            r.round
        );
        assert_eq!(
            r.values.len(),
            5,
            "round {}: every participant has a value",
            r.round
        );
        assert_eq!(r.evaluations, 1 << 5);
        assert_efficient(r);
        // v(N) is the validation accuracy of the round's new model.
        assert!((r.utility_full - metric(r, "val_accuracy")).abs() < 1e-12);
    }
    // Accuracy rises: from the initial model's to well above it.
    let initial = rounds[0].utility_empty;
    let last = metric(&rounds[4], "val_accuracy");
    assert!(
        last > initial + 0.5,
        "accuracy rose from {initial} to only {last}"
    );
    assert!(last >= metric(&rounds[0], "val_accuracy"));

    let contributions = admin
        .get_contributions(pb::GetContributionsRequest {
            federation_id: "flow".into(),
        })
        .await
        .expect("contributions")
        .into_inner()
        .contributions;
    assert_eq!(contributions.len(), 5);
    let total: f64 = contributions.iter().map(|c| c.cumulative_value).sum();
    let telescoped: f64 = rounds
        .iter()
        .map(|r| r.utility_full - r.utility_empty)
        .sum();
    assert!((total - telescoped).abs() < 1e-9);
    for c in &contributions {
        assert_eq!(c.rounds_participated, 5);
        assert!(c.cumulative_value.is_finite());
    }

    let info = admin
        .get_federation(pb::GetFederationRequest {
            federation_id: "flow".into(),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.status, "finished");
    assert_eq!(info.committed_rounds, 5);
    let summary = info.config.expect("config");
    assert!(
        summary.enrollment_secret.is_empty(),
        "the secret is never echoed"
    );
    server.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let server = start_server(Store::memory()).await;
    let channel = connect(&server.url()).await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "fedval.v1.Coordinator".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "fedval.v1.Coordinator",
        "fedval.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    server.shutdown().await.expect("graceful shutdown");
}
