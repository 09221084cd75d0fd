//! RFFL reputations over gRPC: four honest clients and one uploading noise. The noisy
//! client is removed after the warm-up (a REMOVED task, its uploads refused with
//! PERMISSION_DENIED), no honest client is, reputations are in ListRounds, and every
//! client downloads its own model.

use fedval_client::{ClientError, FederationClient, Task, connect};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::support::*;

const ROUNDS: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rffl_removes_the_noise_uploader_over_grpc() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let spec = fedval_core::model::ModelSpec::LogisticRegression {
        num_features: 30,
        num_classes: 3,
    };
    let dim = spec.num_params();
    let config = pb::FederationConfig {
        reputation: Some(pb::Reputation {
            gamma: 1.0,
            warm_up_rounds: Some(3),
            ..Default::default()
        }),
        ..model_federation("rffl", &spec, ROUNDS, 5, 3)
    };
    let mut admin = admin(&url).await;
    create_federation(&mut admin, config).await;
    let mut clients = Vec::new();
    for name in ["h0", "h1", "h2", "h3", "noisy"] {
        let channel = connect(&url).await.expect("connect");
        clients.push(
            FederationClient::enroll(channel, "rffl", SECRET, name, 10)
                .await
                .expect("enroll"),
        );
    }
    let noisy = clients[4].client_id().to_string();

    let direction: Vec<f32> = (0..dim)
        .map(|i| if i % 2 == 0 { 0.3 } else { -0.2 })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut removed = None;
    let mut late = None;
    for round in 1..=ROUNDS {
        if round == 2 {
            // Round 1 has opened: the reputation state is sized by its clients, so a late
            // joiner is refused.
            let channel = connect(&url).await.expect("connect");
            late = Some(FederationClient::enroll(channel, "rffl", SECRET, "late", 10).await);
        }
        for (k, client) in clients.iter_mut().enumerate() {
            let is_noisy = k == 4;
            let task = next_task(client, round).await;
            let delta: Vec<f32> = if is_noisy {
                (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            } else {
                direction
                    .iter()
                    .map(|x| x + 0.05 * k as f32 * rng.random_range(-1.0f32..1.0))
                    .collect()
            };
            match task {
                Task::Train(t) => {
                    assert_eq!(t.round, round);
                    let own = client.download_model(t.model_version).await.expect("own");
                    assert_eq!(own.len(), dim);
                    client
                        .upload_update(t.round, t.model_version, &delta, 10, &[])
                        .await
                        .expect("upload");
                }
                Task::Removed { round: r, reason } => {
                    assert!(is_noisy, "honest client {k} removed: {reason}");
                    assert_eq!(reason, format!("removed by reputation in round {r}"));
                    removed.get_or_insert(r);
                    if round == ROUNDS {
                        // The honest clients may already have finished the federation.
                        continue;
                    }
                    let err = client
                        .upload_update(round, round - 1, &delta, 10, &[])
                        .await
                        .expect_err("a removed client cannot upload");
                    assert!(
                        matches!(&err, ClientError::PermissionDenied(m) if m.contains(&format!("removed by reputation in round {r}"))),
                        "{err}"
                    );
                }
                // The removed client is not waited for: the last round may end first.
                Task::Done { .. } if is_noisy && round == ROUNDS => {}
                other => panic!("round {round}, client {k}: unexpected {other:?}"),
            }
        }
    }
    match late {
        Some(Err(ClientError::FailedPrecondition(m))) => {
            assert!(
                m.contains("takes no new clients once round 1 has opened"),
                "{m}"
            )
        }
        Some(Err(e)) => panic!("late enrollment refused for another reason: {e}"),
        Some(Ok(_)) => panic!("late enrollment accepted"),
        None => panic!("no late enrollment attempted"),
    }
    // Removed after the 3-round warm-up, early enough to be told so.
    let removed = removed.expect("the noisy client was removed");
    assert!(
        removed > 3 && removed < ROUNDS,
        "removed in round {removed}"
    );

    wait_committed(&mut admin, "rffl", ROUNDS).await;
    let rounds = list_rounds(&mut admin, "rffl").await;
    assert_eq!(rounds.len(), ROUNDS as usize);
    for r in &rounds {
        assert_eq!(r.reputations.len(), 5, "round {}", r.round);
        assert_eq!(r.reputation_threshold.is_some(), r.round > 3);
        if r.round > removed {
            assert!(!r.participants.contains(&noisy), "removed yet selected");
        }
    }
    let last = rounds.last().expect("rounds");
    for rep in &last.reputations {
        assert_eq!(rep.removed, rep.client_id == noisy, "{rep:?}");
    }
    // Each client has its own model: honest clients' differ from each other and from
    // the removed client's.
    let mut own = Vec::new();
    for client in clients.iter_mut() {
        own.push(client.download_model(ROUNDS).await.expect("own model"));
    }
    assert_ne!(own[0], own[1]);
    assert_ne!(own[0], own[4]);
    server.shutdown().await.expect("graceful shutdown");
}
