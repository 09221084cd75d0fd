//! Vertical federation over real gRPC: two digits parties (left and right image halves)
//! driven with raw proto calls (PullTask / ExchangeEmbeddings) and core `PartyModel`s;
//! malformed exchanges are refused with INVALID_ARGUMENT and lose nothing; afterwards
//! Admin lists the rounds with their loss and VerFedSV values, and the contributions.

use fedval_core::data::{Dataset, builtin};
use fedval_core::tensor;
use fedval_core::vertical::{ColumnSplit, PartyModel, PartyModelSpec, project};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use tonic::transport::Channel;

use super::support::*;

const FED: &str = "vertical-digits";
const ROUNDS: u32 = 15;
const LR: f32 = 0.5;

type Coordinator = pb::coordinator_client::CoordinatorClient<Channel>;

/// The two halves of the digits images (columns of the left and right quadrants).
fn halves() -> Vec<Vec<usize>> {
    let q = ColumnSplit::digits_quadrants();
    let b = q.blocks();
    vec![
        [b[0].clone(), b[2].clone()].concat(),
        [b[1].clone(), b[3].clone()].concat(),
    ]
}

fn federation(data: &Dataset) -> pb::FederationConfig {
    pb::FederationConfig {
        id: FED.into(),
        enrollment_secret: SECRET.into(),
        rounds: ROUNDS,
        min_clients: 2,
        round_timeout_ms: 600_000,
        seed: 3,
        vertical: Some(pb::VerticalConfig {
            objective: "classification".into(),
            num_classes: 10,
            labels: data.labels.clone(),
            test_ids: (0..data.len() as u32).filter(|i| i % 4 == 0).collect(),
            batch_size: 64,
            learning_rate: LR,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The embedding messages of one exchange: a header and 4 KiB chunks.
fn messages(header: pb::EmbeddingHeader, bytes: &[u8]) -> Vec<pb::EmbeddingMessage> {
    let mut out = vec![pb::EmbeddingMessage {
        kind: Some(pb::embedding_message::Kind::Header(header)),
    }];
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        out.push(pb::EmbeddingMessage {
            kind: Some(pb::embedding_message::Kind::Chunk(pb::TensorChunk {
                offset: (i * 4096) as u64,
                data: chunk.to_vec().into(),
            })),
        });
    }
    out
}

/// Sends `msgs` and collects the answer: the gradient header and the gradient bytes.
async fn exchange(
    client: &mut Coordinator,
    token: &str,
    msgs: Vec<pb::EmbeddingMessage>,
) -> Result<(pb::GradientHeader, Vec<u8>), tonic::Status> {
    let mut stream = client
        .exchange_embeddings(with_token(futures::stream::iter(msgs), token))
        .await?
        .into_inner();
    let mut header = None;
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await? {
        match msg.kind {
            Some(pb::gradient_message::Kind::Header(h)) => header = Some(h),
            Some(pb::gradient_message::Kind::Chunk(c)) => bytes.extend_from_slice(&c.data),
            None => {}
        }
    }
    Ok((header.expect("a gradient header"), bytes))
}

fn header(client_id: &str, round: u64, rows: usize, bytes: &[u8]) -> pb::EmbeddingHeader {
    pb::EmbeddingHeader {
        federation_id: FED.into(),
        client_id: client_id.into(),
        round,
        rows: rows as u32,
        output_dim: 10,
        total_bytes: bytes.len() as u64,
        sha256: tensor::sha256_hex(bytes),
    }
}

fn assert_invalid(result: Result<(pb::GradientHeader, Vec<u8>), tonic::Status>, needle: &str) {
    match result {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains(needle), "{needle}: {}", s.message());
        }
        Ok(_) => panic!("accepted, expected INVALID_ARGUMENT ({needle})"),
    }
}

/// Follows PullTask until Done; party 0 first tries malformed exchanges in round 1.
async fn run_party(
    url: String,
    client_id: String,
    token: String,
    data: Dataset,
    block: Vec<usize>,
    try_bad_input: bool,
) -> u32 {
    let mut client = raw_coordinator(&url).await;
    let mut model = PartyModel::new(
        PartyModelSpec::Linear {
            num_features: block.len(),
            output_dim: 10,
        },
        3,
    )
    .expect("model");
    let mut rounds_done = 0;
    loop {
        let task = client
            .pull_task(with_token(
                pb::PullTaskRequest {
                    federation_id: FED.into(),
                    client_id: client_id.clone(),
                },
                &token,
            ))
            .await
            .expect("pull")
            .into_inner();
        let embed = match task.kind {
            Some(pb::task::Kind::Embed(e)) => e,
            Some(pb::task::Kind::Wait(_)) => continue,
            Some(pb::task::Kind::Done(_)) => return rounds_done,
            other => panic!("unexpected task {other:?}"),
        };
        let ids: Vec<usize> = embed.sample_ids.iter().map(|&i| i as usize).collect();
        let x = project(&data.subset(&ids), &block).expect("projects");
        let h = model.embed(x.view()).expect("embeds");
        let values: Vec<f32> = h.iter().copied().collect();
        let bytes = tensor::to_le_bytes(&values);
        if try_bad_input && embed.round == 1 {
            let rows = ids.len();
            // Wrong rows.
            let short = &bytes[..bytes.len() - 40];
            let r = exchange(
                &mut client,
                &token,
                messages(header(&client_id, 1, rows - 1, short), short),
            )
            .await;
            assert_invalid(r, "sample ids");
            // Bad checksum.
            let mut h1 = header(&client_id, 1, rows, &bytes);
            h1.sha256 = tensor::sha256_hex(b"something else");
            assert_invalid(
                exchange(&mut client, &token, messages(h1, &bytes)).await,
                "checksum mismatch",
            );
            // NaN.
            let mut nan = values.clone();
            nan[3] = f32::NAN;
            let nan = tensor::to_le_bytes(&nan);
            assert_invalid(
                exchange(
                    &mut client,
                    &token,
                    messages(header(&client_id, 1, rows, &nan), &nan),
                )
                .await,
                "NaN",
            );
            // Wrong round.
            assert_invalid(
                exchange(
                    &mut client,
                    &token,
                    messages(header(&client_id, 2, rows, &bytes), &bytes),
                )
                .await,
                "neither open nor committed",
            );
        }
        let (gh, gbytes) = exchange(
            &mut client,
            &token,
            messages(header(&client_id, embed.round, ids.len(), &bytes), &bytes),
        )
        .await
        .expect("exchange");
        assert_eq!(gh.round, embed.round);
        assert_eq!(tensor::sha256_hex(&gbytes), gh.sha256);
        if embed.evaluate_only {
            assert_eq!(gh.rows, 0);
            continue;
        }
        assert_eq!(gh.rows as usize, ids.len());
        let grads = tensor::from_le_bytes(&gbytes).expect("decodes");
        let mut g = h.clone();
        g.iter_mut().zip(&grads).for_each(|(d, s)| *d = *s);
        model
            .apply_gradients(x.view(), g.view(), LR, 0.0)
            .expect("updates");
        rounds_done += 1;
        // A repeated exchange of the committed round returns the same gradients.
        if embed.round == 2 {
            let (again, again_bytes) = exchange(
                &mut client,
                &token,
                messages(header(&client_id, 2, ids.len(), &bytes), &bytes),
            )
            .await
            .expect("replay");
            assert_eq!((again.sha256, again_bytes), (gh.sha256, gbytes));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertical_parties_train_over_grpc_and_are_valued() {
    let data = builtin::digits();
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let mut admin = admin(&url).await;

    let mut unknown = federation(&data);
    if let Some(v) = unknown.vertical.as_mut() {
        v.training = "later".into();
    }
    let err = admin
        .create_federation(pb::CreateFederationRequest {
            config: Some(unknown),
        })
        .await
        .expect_err("unknown training mode refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("vertical.training"), "{err:?}");

    create_federation(&mut admin, federation(&data)).await;
    let mut client = raw_coordinator(&url).await;
    let enroll = |name: &str, num_features: u32| pb::EnrollRequest {
        federation_id: FED.into(),
        enrollment_secret: SECRET.into(),
        client_name: name.into(),
        num_samples: data.len() as u64,
        num_features,
        cost_per_point: 0.0,
    };
    let err = client
        .enroll(enroll("no-columns", 0))
        .await
        .expect_err("num_features 0");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut parties = Vec::new();
    for (m, block) in halves().into_iter().enumerate() {
        let r = client
            .enroll(enroll(&format!("half-{m}"), block.len() as u32))
            .await
            .expect("enrolled")
            .into_inner();
        let v = r.vertical.expect("vertical party settings");
        assert_eq!(
            (v.output_dim, v.hidden, v.training.as_str()),
            (10, 0, "sync")
        );
        assert_eq!(v.learning_rate, LR);
        assert_eq!(r.model, None);
        parties.push(tokio::spawn(run_party(
            url.clone(),
            r.client_id,
            r.token,
            data.clone(),
            block,
            m == 0,
        )));
    }
    for p in parties {
        assert_eq!(p.await.expect("party"), ROUNDS);
    }

    let info = loop {
        let info = admin
            .get_federation(pb::GetFederationRequest {
                federation_id: FED.into(),
            })
            .await
            .expect("info")
            .into_inner();
        if info.status == "finished" {
            break info;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(info.committed_rounds, u64::from(ROUNDS));
    assert_eq!(info.valued_rounds, u64::from(ROUNDS));
    let rounds = list_rounds(&mut admin, FED).await;
    assert_eq!(rounds.len(), ROUNDS as usize);
    for r in &rounds {
        assert_eq!(r.participants.len(), 2, "round {}", r.round);
        assert!(r.stragglers.is_empty());
        assert!(metric(r, "loss").is_finite());
        assert_eq!(r.valuation_method, "verfedsv");
        assert_eq!(r.values.len(), 2);
    }
    let last = rounds.last().expect("rounds");
    assert!(metric(last, "loss") < metric(&rounds[0], "loss"));
    assert!(metric(last, "test_accuracy") > 0.5, "{last:?}");
    let contributions = admin
        .get_contributions(pb::GetContributionsRequest {
            federation_id: FED.into(),
        })
        .await
        .expect("contributions")
        .into_inner()
        .contributions;
    assert_eq!(contributions.len(), 2);
    let total: f64 = contributions.iter().map(|c| c.cumulative_value).sum();
    assert!(
        (total - metric(last, "verfedsv_value_sum")).abs() < 1e-9,
        "{total} vs {last:?}"
    );
    assert!(
        contributions
            .iter()
            .all(|c| c.rounds_participated == u64::from(ROUNDS))
    );
    server.shutdown().await.expect("shutdown");
}
