//! Fair yet asymptotically equal rewards over gRPC: three clients, one of which partly
//! opposes the others, train from their own models. While the policy explores, every
//! participant's own model becomes the new global model; once it exploits, exactly
//! `floor(ratio n)` do and the others keep theirs. ListRounds records the decision of
//! every round, a late joiner is refused, and the policy cannot be combined with RFFL.

use fedval_client::{ClientError, FederationClient, Task, connect};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::support::*;

const ROUNDS: u64 = 9;
const DIM: usize = 9;

/// Client `k`'s update in `round`: its own direction (the third client partly opposes
/// the others) plus seeded noise.
fn delta(k: usize, round: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(k as u64 * 1000 + round);
    let base = [1.0f32, 0.6, -0.4][k];
    (0..DIM)
        .map(|j| base * (1.0 + (j % 3) as f32 * 0.1) + rng.random_range(-0.3f32..0.3))
        .collect()
}

fn config(id: &str) -> pb::FederationConfig {
    assert_eq!(tiny_model().num_params(), DIM);
    pb::FederationConfig {
        // ratio 0.7: floor(0.7 * 3) = 2 recipients; a 4-round window and a low
        // significance so that exploitation starts within a few rounds.
        fair_reward: Some(pb::FairReward {
            ratio: Some(0.7),
            significance: Some(0.15),
            window: Some(4),
            seed: Some(9),
            ..Default::default()
        }),
        ..model_federation(id, &tiny_model(), ROUNDS, 3, 3)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_reward_rounds_are_recorded_and_models_follow_them() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let mut admin = admin(&url).await;

    // One reward policy at a time.
    let both = pb::FederationConfig {
        reputation: Some(pb::Reputation {
            gamma: 1.0,
            ..Default::default()
        }),
        ..config("both")
    };
    let err = admin
        .create_federation(pb::CreateFederationRequest { config: Some(both) })
        .await
        .expect_err("exclusive");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("`fair_reward`") && err.message().contains("`reputation`"),
        "{}",
        err.message()
    );

    create_federation(&mut admin, config("fair")).await;
    let mut clients = Vec::new();
    for name in ["a", "b", "c"] {
        let channel = connect(&url).await.expect("connect");
        clients.push(
            FederationClient::enroll(channel, "fair", SECRET, name, 10)
                .await
                .expect("enroll"),
        );
    }
    let mut late = None;
    for round in 1..=ROUNDS {
        if round == 2 {
            let channel = connect(&url).await.expect("connect");
            late = Some(FederationClient::enroll(channel, "fair", SECRET, "late", 10).await);
        }
        for (k, client) in clients.iter_mut().enumerate() {
            let task = next_task(client, round).await;
            let Task::Train(t) = task else {
                panic!("round {round}, client {k}: unexpected {task:?}");
            };
            assert_eq!((t.round, t.model_version), (round, round - 1));
            let own = client.download_model(t.model_version).await.expect("own");
            assert_eq!(own.len(), DIM);
            client
                .upload_update(t.round, t.model_version, &delta(k, round), 10, &[])
                .await
                .expect("upload");
        }
    }
    // The last round commits, then every client is told the federation is done.
    for client in clients.iter_mut() {
        loop {
            match client.pull_task().await.expect("pull") {
                Task::Wait { .. } => continue,
                Task::Done {
                    final_model_version,
                    ..
                } => {
                    assert_eq!(final_model_version, ROUNDS);
                    break;
                }
                other => panic!("after the last round: unexpected {other:?}"),
            }
        }
    }
    match late {
        Some(Err(ClientError::FailedPrecondition(m))) => assert!(
            m.contains("fair yet asymptotically equal rewards")
                && m.contains("takes no new clients once round 1 has opened"),
            "{m}"
        ),
        Some(Err(e)) => panic!("late enrollment refused for another reason: {e}"),
        Some(Ok(_)) => panic!("late enrollment accepted"),
        None => panic!("no late enrollment attempted"),
    }

    let rounds = list_rounds(&mut admin, "fair").await;
    assert_eq!(rounds.len(), ROUNDS as usize);
    let ids: Vec<String> = clients.iter().map(|c| c.client_id().to_string()).collect();
    let mut exploited = 0;
    let mut frozen: Option<Vec<f64>> = None;
    for r in &rounds {
        let f = r.fair_reward.as_ref().expect("recorded every round");
        let listed: Vec<&str> = f.clients.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!(listed, ids, "round {}", r.round);
        let received: Vec<bool> = f.clients.iter().map(|c| c.received_model).collect();
        let psi: Vec<f64> = f.clients.iter().map(|c| c.psi).collect();
        if f.exploring {
            assert_eq!(exploited, 0, "round {}: explores after exploiting", r.round);
            assert_eq!(received, vec![true; 3], "round {}", r.round);
            assert!(f.clients.iter().all(|c| c.probability.is_none()));
        } else {
            exploited += 1;
            assert_eq!(f.p_value, None, "round {}", r.round);
            assert_eq!(
                received.iter().filter(|&&x| x).count(),
                2,
                "round {}",
                r.round
            );
            let total: f64 = f.clients.iter().filter_map(|c| c.probability).sum();
            assert!((total - 1.0).abs() < 1e-9, "round {}: {total}", r.round);
            // psi is frozen while exploiting.
            assert_eq!(frozen.get_or_insert_with(|| psi.clone()), &psi);
        }
        // The opposing client contributes least.
        assert!(
            psi[2] < psi[0] && psi[2] < psi[1],
            "round {}: {psi:?}",
            r.round
        );
    }
    assert!(exploited >= 2, "exploited in only {exploited} rounds");
    let last_explored = rounds
        .iter()
        .filter_map(|r| r.fair_reward.as_ref())
        .rfind(|f| f.exploring)
        .expect("explored first");
    assert!(last_explored.p_value.is_some_and(|p| p > 0.15));

    // Every client downloads its own model: a recipient's equals every other
    // recipient's (the new global model), a non-recipient's is the one it had.
    for r in &rounds {
        let f = r.fair_reward.as_ref().expect("recorded");
        let v = r.model_version;
        let mut now = Vec::new();
        let mut before = Vec::new();
        for client in clients.iter_mut() {
            now.push(client.download_model(v).await.expect("own"));
            before.push(client.download_model(v - 1).await.expect("previous"));
        }
        let recipients: Vec<usize> = (0..3).filter(|&i| f.clients[i].received_model).collect();
        for (i, c) in f.clients.iter().enumerate() {
            if c.received_model {
                assert_eq!(now[i], now[recipients[0]], "round {v}, client {i}");
            } else {
                assert_eq!(now[i], before[i], "round {v}, client {i}");
                assert_ne!(now[i], now[recipients[0]], "round {v}, client {i}");
            }
        }
    }
    server.shutdown().await.expect("graceful shutdown");
}
