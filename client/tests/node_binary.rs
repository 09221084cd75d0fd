//! The `fedval-client` binary as a separate process against a real server: two nodes
//! on local CSV files complete a federation; a wrong secret fails with a clear message;
//! two `--vertical` parties on `id,features...` CSVs complete a vertical federation.

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

/// Runs the node binary with `args`, then `--data csv`, to completion on a blocking thread.
async fn run_binary(args: &[&str], csv: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedval-client"));
    command.args(args).arg("--data").arg(csv);
    tokio::task::spawn_blocking(move || command.output().expect("the binary starts"))
        .await
        .expect("join")
}

/// Runs the node binary to completion on a blocking thread.
async fn node(url: &str, name: &str, secret: &str, csv: &Path) -> Output {
    run_binary(
        &[
            "--server",
            url,
            "--federation",
            "iris",
            "--secret",
            secret,
            "--name",
            name,
        ],
        csv,
    )
    .await
}

/// Adds the admin bearer token to an admin request.
fn authorize(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let token: tonic::metadata::MetadataValue<_> =
        format!("Bearer {ADMIN}").parse().expect("ascii");
    r.metadata_mut().insert("authorization", token);
    Ok(r)
}

/// An admin client that authorises every call with [`authorize`].
type Admin = AdminClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// Starts a server on a free loopback port; returns it, its url and an admin client.
async fn start_server() -> (RunningServer, String, Admin) {
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = RunningServer::start(addr, ServerSettings::new(Store::memory(), ADMIN))
        .await
        .expect("server");
    let url = server.url();
    let channel = fedval_client::connect(&url).await.expect("connect");
    let admin = AdminClient::with_interceptor(channel, authorize as fn(_) -> _);
    (server, url, admin)
}

/// Asserts that every process succeeded (showing its output if not); returns the stdouts.
fn successful_stdouts(outs: [&Output; 2]) -> Vec<String> {
    outs.iter()
        .map(|out| {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .collect()
}

/// The committed rounds of `federation_id`.
async fn rounds(admin: &mut Admin, federation_id: &str) -> Vec<pb::RoundRecord> {
    admin
        .list_rounds(pb::ListRoundsRequest {
            federation_id: federation_id.into(),
        })
        .await
        .expect("rounds")
        .into_inner()
        .rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_complete_a_federation() {
    let (server, url, mut admin) = start_server().await;
    let iris = builtin::iris();
    let part = |keep: fn(usize) -> bool| {
        iris.subset(&(0..iris.len()).filter(|&i| keep(i)).collect::<Vec<_>>())
    };
    let (validation, a, b) = (
        part(|i| i % 5 == 0),
        part(|i| i % 5 != 0 && i % 2 == 0),
        part(|i| i % 5 != 0 && i % 2 == 1),
    );
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
    for stdout in successful_stdouts([&out_a, &out_b]) {
        assert!(stdout.contains("final model version 3"), "stdout: {stdout}");
    }
    let rounds = rounds(&mut admin, "iris").await;
    assert_eq!(rounds.len(), 3);
    for r in &rounds {
        assert_eq!(r.participants.len(), 2);
        assert_eq!(r.valuation_status, "done");
    }
    server.shutdown().await.expect("shutdown");
}

/// Writes `block` as a party CSV with a header and the ids in reverse order (any order is
/// valid; each row is found by its id).
fn write_party_csv(path: &Path, block: &ndarray::Array2<f32>) {
    let mut text = String::from("id,features\n");
    for (id, row) in block.rows().into_iter().enumerate().rev() {
        let fields: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text.push_str(&format!("{id},{}\n", fields.join(",")));
    }
    std::fs::write(path, text).expect("write party csv");
}

/// Runs the node binary in vertical mode to completion.
async fn party(url: &str, name: &str, csv: &Path) -> Output {
    run_binary(
        &[
            "--server",
            url,
            "--federation",
            "iris-v",
            "--secret",
            "v-secret",
            "--name",
            name,
            "--vertical",
        ],
        csv,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vertical_party_processes_complete_a_vertical_federation() {
    let (server, url, mut admin) = start_server().await;
    let iris = builtin::iris();
    let split = fedval_core::vertical::ColumnSplit::contiguous(4, 2).expect("split");
    let blocks = split.project_all(&iris).expect("blocks");
    let test_ids: Vec<u32> = (0..iris.len() as u32).filter(|i| i % 5 == 0).collect();
    admin
        .create_federation(pb::CreateFederationRequest {
            config: Some(pb::FederationConfig {
                id: "iris-v".into(),
                enrollment_secret: "v-secret".into(),
                rounds: 5,
                min_clients: 2,
                round_timeout_ms: 30_000,
                seed: 3,
                vertical: Some(pb::VerticalConfig {
                    objective: "classification".into(),
                    num_classes: 3,
                    labels: iris.labels.clone(),
                    test_ids,
                    batch_size: 16,
                    learning_rate: 0.1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("create");

    let dir = tempfile::tempdir().expect("tempdir");
    let (csv_a, csv_b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    write_party_csv(&csv_a, &blocks[0]);
    write_party_csv(&csv_b, &blocks[1]);

    // A CSV with a repeated id is refused before anything is sent, naming the line.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "0,1.0\n0,2.0\n").expect("write");
    let out = party(&url, "bad", &bad).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: sample id 0 already appeared on line 1"),
        "stderr: {stderr}"
    );

    let (out_a, out_b) = tokio::join!(
        party(&url, "party-a", &csv_a),
        party(&url, "party-b", &csv_b)
    );
    for stdout in successful_stdouts([&out_a, &out_b]) {
        assert!(stdout.contains("2 features"), "stdout: {stdout}");
        assert!(stdout.contains("5 rounds trained"), "stdout: {stdout}");
        assert!(stdout.contains("evaluation loss"), "stdout: {stdout}");
    }
    let rounds = rounds(&mut admin, "iris-v").await;
    assert_eq!(rounds.len(), 5);
    for r in &rounds {
        assert_eq!(r.participants.len(), 2);
    }
    server.shutdown().await.expect("shutdown");
}
