//! Untrusted input: every malformed request gets the right status and an actionable
//! message, and nothing already accepted is lost.

use fedval_proto::v1 as pb;
use fedval_server::store::Store;
use tonic::Code;

use super::support::*;

const FED: &str = "bad";

async fn enroll(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    name: &str,
) -> (String, String) {
    let r = client
        .enroll(enroll_request(FED, name, 10))
        .await
        .expect("enroll")
        .into_inner();
    (r.client_id, r.token)
}

async fn pull(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    id: &str,
    token: &str,
) -> Result<pb::Task, tonic::Status> {
    let request = pb::PullTaskRequest {
        federation_id: FED.into(),
        client_id: id.into(),
    };
    client
        .pull_task(with_token(request, token))
        .await
        .map(|r| r.into_inner())
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status
            .message()
            .to_lowercase()
            .contains(&needle.to_lowercase()),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_nothing_accepted_is_lost() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let (config, prepared) = digits(2, 3);
    let mut wire = digits_federation(FED, 2, &config, &prepared);
    wire.min_clients = 2;
    wire.round_timeout_ms = 60_000;
    let mut admin = admin(&url).await;

    // A malformed federation config names the bad field.
    let mut broken = wire.clone();
    broken.rounds = 0;
    assert_status(
        admin
            .create_federation(pb::CreateFederationRequest {
                config: Some(broken),
            })
            .await,
        Code::InvalidArgument,
        "`rounds`",
    );
    let mut broken = wire.clone();
    broken.valuation.as_mut().expect("valuation").method = "magic".into();
    assert_status(
        admin
            .create_federation(pb::CreateFederationRequest {
                config: Some(broken),
            })
            .await,
        Code::InvalidArgument,
        "valuation.method",
    );
    create_federation(&mut admin, wire.clone()).await;
    assert_status(
        admin
            .create_federation(pb::CreateFederationRequest { config: Some(wire) })
            .await,
        Code::AlreadyExists,
        "already exists",
    );

    let mut raw = raw_coordinator(&url).await;
    // Enrollment needs the secret.
    let bad_secret = raw
        .enroll(pb::EnrollRequest {
            enrollment_secret: "guess".into(),
            ..enroll_request(FED, "mallory", 1)
        })
        .await;
    assert_status(bad_secret, Code::Unauthenticated, "enrollment secret");
    let (a, token_a) = enroll(&mut raw, "alice").await;
    let (b, token_b) = enroll(&mut raw, "bob").await;

    // Missing and wrong tokens.
    let no_token = raw
        .pull_task(pb::PullTaskRequest {
            federation_id: FED.into(),
            client_id: a.clone(),
        })
        .await;
    assert_status(no_token, Code::Unauthenticated, "authorization");
    assert_status(
        pull(&mut raw, &a, &format!("{a}.{}", "0".repeat(64))).await,
        Code::Unauthenticated,
        "token",
    );
    assert_status(
        pull(&mut raw, &a, "garbage").await,
        Code::Unauthenticated,
        "token",
    );
    // Bob's token cannot act as Alice.
    assert_status(
        pull(&mut raw, &a, &token_b).await,
        Code::PermissionDenied,
        &b,
    );

    // Wait for round 1 to open for Alice.
    let (round, version) = loop {
        match pull(&mut raw, &a, &token_a).await.expect("pull").kind {
            Some(pb::task::Kind::Train(t)) => break (t.round, t.model_version),
            Some(pb::task::Kind::Wait(_)) => continue,
            other => panic!("unexpected task {other:?}"),
        }
    };
    assert_eq!((round, version), (1, 0));
    let params = 64 * 10 + 10;
    let good: Vec<f32> = (0..params)
        .map(|i| (i as f32 * 0.37).sin() * 0.01)
        .collect();

    // Alice's valid update is accepted.
    let ack = RawUpload::valid(FED, &a, 1, 0, &good)
        .send(&mut raw, &token_a)
        .await
        .expect("valid upload");
    assert_eq!((ack.round, ack.accepted), (1, true));

    // Each malformed upload: what it is, the upload, whose token, the expected status and
    // a word the message must contain.
    let upload = |client: &str, round: u64, version: u64, values: &[f32]| {
        RawUpload::valid(FED, client, round, version, values)
    };
    let mut short = upload(&b, 1, 0, &good);
    short.chunks[0].1.truncate(100);
    let mut long = upload(&b, 1, 0, &good);
    long.chunks.push((params as u64 * 4, vec![0u8; 4096]));
    let mut corrupt = upload(&b, 1, 0, &good);
    corrupt.chunks[0].1[5] ^= 0xff;
    let with_value = |bad: f32| {
        let mut values = good.clone();
        values[17] = bad;
        upload(&b, 1, 0, &values)
    };
    let cases = vec![
        (
            "second update for a round",
            upload(&a, 1, 0, &good),
            &token_a,
            Code::AlreadyExists,
            "already accepted",
        ),
        (
            "acting as another client",
            upload(&a, 1, 0, &good),
            &token_b,
            Code::PermissionDenied,
            b.as_str(),
        ),
        (
            "wrong length in the header",
            upload(&b, 1, 0, &good[..params - 1]),
            &token_b,
            Code::InvalidArgument,
            "wrong tensor length",
        ),
        (
            "fewer bytes than declared",
            short,
            &token_b,
            Code::InvalidArgument,
            "incomplete",
        ),
        (
            "more bytes than declared",
            long,
            &token_b,
            Code::ResourceExhausted,
            "overflow",
        ),
        (
            "a NaN",
            with_value(f32::NAN),
            &token_b,
            Code::InvalidArgument,
            "17",
        ),
        (
            "an infinity",
            with_value(f32::INFINITY),
            &token_b,
            Code::InvalidArgument,
            "17",
        ),
        (
            "checksum mismatch",
            corrupt,
            &token_b,
            Code::InvalidArgument,
            "checksum",
        ),
        (
            "a future round",
            upload(&b, 2, 0, &good),
            &token_b,
            Code::InvalidArgument,
            "has not started",
        ),
        (
            "a stale model version",
            upload(&b, 1, 3, &good),
            &token_b,
            Code::InvalidArgument,
            "model version",
        ),
    ];
    for (what, bad, token, code, needle) in cases {
        eprintln!("case: {what}");
        assert_status(bad.send(&mut raw, token).await, code, needle);
    }
    // An upload that does not start with a header.
    let chunk_only = vec![pb::UploadMessage {
        kind: Some(pb::upload_message::Kind::Chunk(pb::TensorChunk {
            offset: 0,
            data: vec![0u8; 8].into(),
        })),
    }];
    assert_status(
        raw.upload_update(with_token(futures::stream::iter(chunk_only), &token_b))
            .await,
        Code::InvalidArgument,
        "header",
    );

    // Bob's valid update completes the round; it commits with BOTH updates.
    RawUpload::valid(FED, &b, 1, 0, &good)
        .send(&mut raw, &token_b)
        .await
        .expect("bob's upload");
    let mut events = watch(&mut admin, FED).await;
    let rounds = loop {
        let rounds = list_rounds(&mut admin, FED).await;
        if !rounds.is_empty() {
            break rounds;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), events.message()).await;
    };
    let mut participants = rounds[0].participants.clone();
    participants.sort();
    assert_eq!(
        participants,
        vec![a.clone(), b.clone()],
        "the accepted update survived every bad request"
    );

    // Now round 1 is closed.
    assert_status(
        RawUpload::valid(FED, &a, 1, 0, &good)
            .send(&mut raw, &token_a)
            .await,
        Code::FailedPrecondition,
        "closed",
    );
    // Unknown federation.
    let unknown = raw.enroll(enroll_request("nope", "x", 1)).await;
    assert_status(unknown, Code::NotFound, "nope");
    // Admin calls need the admin token.
    let mut anonymous =
        pb::admin_client::AdminClient::new(fedval_client::connect(&url).await.expect("connect"));
    assert_status(
        anonymous
            .list_federations(pb::ListFederationsRequest {})
            .await,
        Code::Unauthenticated,
        "",
    );
    server.shutdown().await.expect("graceful shutdown");
}
