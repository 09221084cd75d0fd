//! The `fedval-client` binary as a separate process against a real server: two nodes
//! on local CSV files complete a federation; a wrong secret fails with a clear message.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use fedval_core::data::{Dataset, builtin, to_csv};
use fedval_core::model::ModelSpec;
use fedval_core::tensor;
use fedval_proto::v1 as pb;
use fedval_proto::v1::admin_client::AdminClient;
use fedval_server::store::Store;
use fedval_server::{RunningServer, ServerSettings};

const ADMIN: &str = "node-binary-admin";

fn write_csv(path: &Path, data: &Dataset) {
    std::fs::write(path, to_csv(data)).expect("write csv");
}

fn federation(validation: &Dataset) -> pb::FederationConfig {
    let spec = ModelSpec::LogisticRegression {
        num_features: 4,
        num_classes: 3,
    };
    let features: Vec<f32> = validation.features.iter().copied().collect();
    pb::FederationConfig {
        id: "iris".into(),
        enrollment_secret: "iris-secret".into(),
        model: Some((&spec).into()),
        rounds: 3,
        min_clients: 2,
        round_timeout_ms: 30_000,
        valuation: Some(pb::ValuationConfig {
            method: "exact".into(),
            ..Default::default()
        }),
        validation: Some(pb::InlineDataset {
            num_features: 4,
            features: tensor::to_le_bytes(&features).into(),
            labels: validation.labels.clone(),
        }),
        seed: 3,
        ..Default::default()
    }
}

/// Runs the node binary to completion on a blocking thread.
async fn node(url: &str, name: &str, secret: &str, csv: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedval-client"));
    command
        .args([
            "--server",
            url,
            "--federation",
            "iris",
            "--secret",
            secret,
            "--name",
            name,
            "--data",
        ])
        .arg(csv);
    tokio::task::spawn_blocking(move || command.output().expect("the binary starts"))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_complete_a_federation() {
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = RunningServer::start(addr, ServerSettings::new(Store::memory(), ADMIN))
        .await
        .expect("server");
    let url = server.url();
    let iris = builtin::iris();
    let rows: Vec<usize> = (0..iris.len()).collect();
    let (validation, a, b) = (
        iris.subset(
            &rows
                .iter()
                .copied()
                .filter(|i| i % 5 == 0)
                .collect::<Vec<_>>(),
        ),
        iris.subset(
            &rows
                .iter()
                .copied()
                .filter(|i| i % 5 != 0 && i % 2 == 0)
                .collect::<Vec<_>>(),
        ),
        iris.subset(
            &rows
                .iter()
                .copied()
                .filter(|i| i % 5 != 0 && i % 2 == 1)
                .collect::<Vec<_>>(),
        ),
    );
    let channel = fedval_client::connect(&url).await.expect("connect");
    let token: tonic::metadata::MetadataValue<_> =
        format!("Bearer {ADMIN}").parse().expect("ascii");
    let mut admin = AdminClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", token.clone());
        Ok(r)
    });
    admin
        .create_federation(pb::CreateFederationRequest {
            config: Some(federation(&validation)),
        })
        .await
        .expect("create");

    let dir = tempfile::tempdir().expect("tempdir");
    let (csv_a, csv_b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    write_csv(&csv_a, &a);
    write_csv(&csv_b, &b);

    let wrong = node(&url, "mallory", "guess", &csv_a).await;
    assert!(!wrong.status.success(), "a wrong secret must fail");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("enrollment secret"), "stderr: {stderr}");

    let (out_a, out_b) = tokio::join!(
        node(&url, "node-a", "iris-secret", &csv_a),
        node(&url, "node-b", "iris-secret", &csv_b)
    );
    for out in [&out_a, &out_b] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("final model version 3"), "stdout: {stdout}");
    }
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation_id: "iris".into(),
        })
        .await
        .expect("rounds")
        .into_inner()
        .rounds;
    assert_eq!(rounds.len(), 3);
    for r in &rounds {
        assert_eq!(r.participants.len(), 2);
        assert_eq!(r.valuation_status, "done");
    }
    server.shutdown().await.expect("shutdown");
}
