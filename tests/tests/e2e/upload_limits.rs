//! Upload limits over real gRPC: an upload that has not finished when its round's
//! deadline passes is refused (the server does not hold its buffer for ever), a second
//! concurrent upload of the same client is refused, and an oversized stream message is
//! RESOURCE_EXHAUSTED.

use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use tonic::Code;

use super::support::*;

const FED: &str = "limits";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_duplicate_and_oversized_uploads_are_refused() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let (config, prepared) = digits(1, 5);
    let mut wire = digits_federation(FED, 1, &config, &prepared);
    wire.min_clients = 1;
    wire.round_timeout_ms = 2_000;
    let mut admin = admin(&url).await;
    create_federation(&mut admin, wire).await;
    let mut raw = raw_coordinator(&url).await;
    let enrolled = raw
        .enroll(enroll_request(FED, "slow", 10))
        .await
        .expect("enroll")
        .into_inner();
    let (id, token) = (enrolled.client_id, enrolled.token);
    let round = loop {
        let task = raw
            .pull_task(with_token(
                pb::PullTaskRequest {
                    federation_id: FED.into(),
                    client_id: id.clone(),
                },
                &token,
            ))
            .await
            .expect("pull")
            .into_inner();
        if let Some(pb::task::Kind::Train(t)) = task.kind {
            break t.round;
        }
    };
    let params = 64 * 10 + 10;
    let values = vec![0.01f32; params];
    let upload = RawUpload::valid(FED, &id, round, 0, &values);

    // Two uploads of the same client send their header and then nothing. Whichever the
    // server sees second is refused at once; the other stays open until the deadline.
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadMessage>(4);
        tx.send(pb::UploadMessage {
            kind: Some(pb::upload_message::Kind::Header(upload.header.clone())),
        })
        .await
        .expect("queue header");
        senders.push(tx);
        let mut client = raw.clone();
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            client
                .upload_update(with_token(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    &token,
                ))
                .await
        }));
    }
    let (first, _, rest) = futures::future::select_all(calls).await;
    let duplicate = first.expect("join").expect_err("a concurrent duplicate");
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    assert!(duplicate.message().contains("in progress"), "{duplicate:?}");
    let stalled = rest.into_iter().next().expect("the other upload");
    let status = stalled
        .await
        .expect("join")
        .expect_err("an unfinished upload is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("deadline"), "{status:?}");
    drop(senders);

    // One message bigger than the 8 MiB limit. The round reopens after its empty close;
    // until it has, the header itself is refused as late.
    let status = loop {
        let mut oversized = RawUpload::valid(FED, &id, round, 0, &values);
        oversized.chunks = vec![(0, vec![0u8; 9 << 20])];
        let status = oversized
            .send(&mut raw, &token)
            .await
            .expect_err("oversized message");
        if status.code() != Code::FailedPrecondition {
            break status;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("chunks of at most"), "{status:?}");
    server.shutdown().await.expect("graceful shutdown");
}
