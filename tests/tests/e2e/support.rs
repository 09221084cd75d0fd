//! Shared set-up: servers, admin clients, data, and raw upload helpers.

use std::net::SocketAddr;

use fedval_client::{FederationClient, Task};
use fedval_core::model::ModelSpec;
use fedval_core::tensor;
use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use fedval_server::{RunningServer, ServerSettings};
use fedval_sim::scenario::{Partition, SimConfig};
use fedval_sim::setup::{Prepared, prepare};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const SECRET: &str = "test-enroll-secret";

/// A server on a free loopback port over `store`.
pub async fn start_server(store: Store) -> RunningServer {
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    RunningServer::start(addr, ServerSettings::new(store, ADMIN_TOKEN))
        .await
        .expect("server starts")
}

/// An authenticated Admin client.
pub async fn admin(url: &str) -> fedval_sim::runner::Admin {
    let channel = fedval_client::connect(url).await.expect("connect");
    fedval_sim::runner::admin_client(channel, ADMIN_TOKEN).expect("admin client")
}

/// Creates the federation `config` describes.
pub async fn create_federation(
    admin: &mut fedval_sim::runner::Admin,
    config: pb::FederationConfig,
) {
    admin
        .create_federation(pb::CreateFederationRequest {
            config: Some(config),
        })
        .await
        .expect("create federation");
}

/// The event stream of `federation` (subscribe before any node enrolls: no round is missed).
pub async fn watch(
    admin: &mut fedval_sim::runner::Admin,
    federation: &str,
) -> tonic::Streaming<pb::FederationEvent> {
    admin
        .watch_events(pb::WatchEventsRequest {
            federation_id: federation.into(),
        })
        .await
        .expect("watch events")
        .into_inner()
}

/// The whole ledger of `federation`: its entries and every client's totals.
pub async fn list_ledger(
    admin: &mut fedval_sim::runner::Admin,
    federation: &str,
) -> pb::ListLedgerResponse {
    admin
        .list_ledger(pb::ListLedgerRequest {
            federation_id: federation.into(),
            client_id: None,
        })
        .await
        .expect("list ledger")
        .into_inner()
}

/// Logistic regression over 2 features and 3 classes (9 parameters): the model of the
/// tests that drive their clients' updates by hand.
pub fn tiny_model() -> ModelSpec {
    ModelSpec::LogisticRegression {
        num_features: 2,
        num_classes: 3,
    }
}

/// The wire config of a horizontal federation `id` training `model` for `rounds` rounds
/// once `min_clients` have enrolled, with `seed`, a 60 s round timeout and no valuation;
/// tests add the mechanism they exercise.
pub fn model_federation(
    id: &str,
    model: &ModelSpec,
    rounds: u64,
    min_clients: u32,
    seed: u64,
) -> pb::FederationConfig {
    pb::FederationConfig {
        id: id.into(),
        enrollment_secret: SECRET.into(),
        model: Some(model.into()),
        rounds: rounds as u32,
        min_clients,
        round_timeout_ms: 60_000,
        valuation: Some(pb::ValuationConfig {
            method: "none".into(),
            ..Default::default()
        }),
        seed,
        ..Default::default()
    }
}

/// Runs scenario `config` in-process (an embedded server, no progress bar).
pub async fn simulate(config: SimConfig) -> fedval_sim::Report {
    let opts = fedval_sim::SimOptions {
        config,
        server: None,
        admin_token: "sim-test".into(),
        progress: false,
    };
    fedval_sim::run(&opts).await.expect("simulation runs")
}

/// Writes `report` to a fresh directory; returns the directory (kept alive for the other
/// files) and the parsed `report.json`.
pub fn written_report(report: &fedval_sim::Report) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    report.write(dir.path()).expect("report written");
    let json = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("read"),
    )
    .expect("json");
    (dir, json)
}

/// `clients` IID shards of digits (no adversaries), plus validation and test sets.
pub fn digits(clients: usize, seed: u64) -> (SimConfig, Prepared) {
    let config = SimConfig {
        clients,
        noisy: 0,
        tiny: 0,
        partition: Partition::Iid,
        seed,
        ..SimConfig::default()
    };
    let prepared = prepare(&config).expect("prepare digits");
    (config, prepared)
}

/// The wire config of a digits federation with `rounds` rounds and exact valuation of
/// validation accuracy.
pub fn digits_federation(
    id: &str,
    rounds: u64,
    config: &SimConfig,
    prepared: &Prepared,
) -> pb::FederationConfig {
    let mut c = config.clone();
    c.rounds = rounds;
    c.valuation = "exact".into();
    c.utility = "accuracy".into();
    fedval_sim::runner::federation_config(id, SECRET, &c, prepared)
}

/// The first task of `client` for round `round` or later that is not a wait: waits and
/// train tasks of earlier rounds (pulled again until the round commits) are skipped.
pub async fn next_task(client: &mut FederationClient, round: u64) -> Task {
    loop {
        match client.pull_task().await.expect("pull") {
            Task::Wait { .. } => continue,
            Task::Train(t) if t.round < round => continue,
            other => return other,
        }
    }
}

/// A raw enrollment of `name` in horizontal `federation` with the test secret, announcing
/// `num_samples` samples and no cost (tests override the fields they exercise).
pub fn enroll_request(federation: &str, name: &str, num_samples: u64) -> pb::EnrollRequest {
    pb::EnrollRequest {
        federation_id: federation.into(),
        enrollment_secret: SECRET.into(),
        client_name: name.into(),
        num_samples,
        num_features: 0,
        cost_per_point: 0.0,
    }
}

/// A raw Coordinator client (for requests the SDK would never send).
pub async fn raw_coordinator(url: &str) -> pb::coordinator_client::CoordinatorClient<Channel> {
    let channel = fedval_client::connect(url).await.expect("connect");
    pb::coordinator_client::CoordinatorClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Attaches `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A hand-built upload: header plus the given raw chunks `(offset, bytes)`.
pub struct RawUpload {
    pub header: pb::UpdateHeader,
    pub chunks: Vec<(u64, Vec<u8>)>,
}

impl RawUpload {
    /// A well-formed upload of `values` from `client_id` for `round` trained from `version`.
    pub fn valid(
        federation: &str,
        client_id: &str,
        round: u64,
        version: u64,
        values: &[f32],
    ) -> Self {
        let bytes = tensor::to_le_bytes(values);
        RawUpload {
            header: pb::UpdateHeader {
                federation_id: federation.into(),
                client_id: client_id.into(),
                round,
                model_version: version,
                num_samples: 10,
                metrics: vec![pb::Metric {
                    name: "loss".into(),
                    value: 1.0,
                }],
                total_bytes: bytes.len() as u64,
                sha256: tensor::sha256_hex(&bytes),
            },
            chunks: vec![(0, bytes)],
        }
    }

    /// Sends it with `token`.
    pub async fn send(
        self,
        client: &mut pb::coordinator_client::CoordinatorClient<Channel>,
        token: &str,
    ) -> Result<pb::UploadAck, tonic::Status> {
        let mut messages = vec![pb::UploadMessage {
            kind: Some(pb::upload_message::Kind::Header(self.header)),
        }];
        for (offset, data) in self.chunks {
            messages.push(pb::UploadMessage {
                kind: Some(pb::upload_message::Kind::Chunk(pb::TensorChunk {
                    offset,
                    data: data.into(),
                })),
            });
        }
        client
            .upload_update(with_token(futures::stream::iter(messages), token))
            .await
            .map(|r| r.into_inner())
    }
}

/// The value of metric `name` in a round record.
pub fn metric(r: &pb::RoundRecord, name: &str) -> f64 {
    r.metrics
        .iter()
        .find(|m| m.name == name)
        .map_or(f64::NAN, |m| m.value)
}

/// Waits until `federation` has committed `rounds` rounds: the last upload is acknowledged
/// before its round commits, so a test that reads the rounds right after it must wait.
/// Panics after a generous bound (a hung commit fails the test instead of hanging it).
pub async fn wait_committed(admin: &mut fedval_sim::runner::Admin, federation: &str, rounds: u64) {
    for _ in 0..6000 {
        let info = admin
            .get_federation(pb::GetFederationRequest {
                federation_id: federation.into(),
            })
            .await
            .expect("get federation")
            .into_inner();
        if info.committed_rounds >= rounds {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("federation {federation} never committed {rounds} rounds");
}

/// The committed rounds of `federation`.
pub async fn list_rounds(
    admin: &mut fedval_sim::runner::Admin,
    federation: &str,
) -> Vec<pb::RoundRecord> {
    admin
        .list_rounds(pb::ListRoundsRequest {
            federation_id: federation.into(),
        })
        .await
        .expect("list rounds")
        .into_inner()
        .rounds
}

/// Efficiency of exact Shapley: a round's values add up to v(N) - v(empty).
pub fn assert_efficient(r: &pb::RoundRecord) {
    let sum: f64 = r.values.iter().map(|v| v.value).sum();
    let gain = r.utility_full - r.utility_empty;
    assert!(
        (sum - gain).abs() < 1e-9,
        "round {}: values sum to {sum}, v(N) - v(empty) = {gain}",
        r.round
    );
}
