//! Crash and restart: the server dies after round 2 (its runtime is torn down with
//! every task, as in a crash), a new server starts on the same data directory and port,
//! the same clients carry on, training continues from round 3, and every update that
//! was acknowledged before the crash is part of a committed round.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedval_client::{FederationClient, ModelTrainer, NodeEvent, RunOptions, connect, run_node};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use fedval_server::{ServerSettings, run};

use super::support::*;

/// A server on its own runtime, so a crash can kill every task it spawned.
struct CrashableServer {
    runtime: tokio::runtime::Runtime,
}

async fn start_crashable(addr: SocketAddr, dir: &Path) -> (CrashableServer, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The previous server's store may still be closing on a blocking thread: retry.
    let mut store = None;
    for _ in 0..100 {
        match Store::open_redb(dir) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let store = store.expect("the data directory reopens");
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = listener.expect("the port can be bound again");
        let _ = tx.send(listener.local_addr().expect("addr"));
        run(
            listener,
            ServerSettings::new(store, ADMIN_TOKEN),
            std::future::pending(),
        )
        .await
    });
    let addr = rx.await.expect("server bound");
    (CrashableServer { runtime }, addr)
}

impl CrashableServer {
    fn crash(self) {
        self.runtime.shutdown_background();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_at_the_last_committed_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = start_crashable(([127, 0, 0, 1], 0).into(), dir.path()).await;
    let url = format!("http://{addr}");
    let (config, prepared) = digits(3, 11);
    let mut admin = admin(&url).await;
    let mut wire = digits_federation("restart", 5, &config, &prepared);
    wire.round_timeout_ms = 20_000;
    create_federation(&mut admin, wire).await;
    let mut events = watch(&mut admin, "restart").await;

    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut nodes = Vec::new();
    for (i, plan) in prepared.clients.iter().cloned().enumerate() {
        let (url, acked) = (url.clone(), acked.clone());
        nodes.push(tokio::spawn(async move {
            let channel = connect(&url).await?;
            let mut client = FederationClient::enroll(
                channel,
                "restart",
                SECRET,
                &plan.name,
                plan.data.len() as u64,
            )
            .await?;
            let me = client.client_id().to_string();
            let hook: fedval_client::EventHook = Arc::new(move |event| {
                if let NodeEvent::Uploaded { round } = event {
                    acked.lock().expect("lock").push((me.clone(), round));
                }
            });
            let opts = RunOptions {
                max_retries: 60,
                initial_backoff: Duration::from_millis(50),
                max_wait: Duration::from_millis(500),
                on_event: Some(hook),
                ..RunOptions::default()
            };
            let trainer = ModelTrainer::new(client.model().clone(), plan.data, 200 + i as u64)?;
            run_node(&mut client, trainer, &opts).await
        }));
    }

    // Crash right after round 2 is committed and valued.
    let mut before = Vec::new();
    while let Some(event) = events.message().await.expect("event stream") {
        if let Some(pb::federation_event::Kind::RoundValued(r)) = event.kind {
            let round = r.round;
            before.push(r);
            if round == 2 {
                break;
            }
        }
    }
    server.crash();
    let acked_before_crash = acked.lock().expect("lock").clone();
    assert!(acked_before_crash.iter().filter(|(_, r)| *r <= 2).count() >= 6);

    let (server, _) = start_crashable(addr, dir.path()).await;
    let mut admin = super::support::admin(&url).await;
    let info = admin
        .get_federation(pb::GetFederationRequest {
            federation_id: "restart".into(),
        })
        .await
        .expect("the federation survived")
        .into_inner();
    assert!(
        info.committed_rounds >= 2,
        "restarted at round {}",
        info.committed_rounds
    );
    assert_eq!(info.clients.len(), 3, "enrolled clients survived");

    for node in nodes {
        let summary = tokio::time::timeout(Duration::from_secs(120), node)
            .await
            .expect("nodes finish after the restart")
            .expect("node task")
            .expect("node run");
        assert_eq!(summary.final_model_version, 5);
    }
    let rounds = list_rounds(&mut admin, "restart").await;
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // Rounds 1 and 2 are exactly what was committed and valued before the crash.
    assert_eq!(rounds[..2], before[..2]);
    // No acknowledged update is missing: each one is a participant of its round.
    for (client, round) in acked.lock().expect("lock").iter() {
        let r = &rounds[(*round - 1) as usize];
        assert!(
            r.participants.contains(client),
            "acknowledged update of {client} for round {round} is missing"
        );
    }
    for r in &rounds {
        assert_eq!(r.model_version, r.round);
        assert_efficient(r);
    }
    server.crash();
}
