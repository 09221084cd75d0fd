//! [`FederationClient`]: one node's identity in one federation, and the five Coordinator
//! calls made as that node.
//!
//! The identity lives in a `Session` (shared with the vertical
//! [`VerticalClient`](crate::VerticalClient)), which owns the bearer token and attaches it,
//! with the federation and client ids the server checks against it, to every call through
//! one helper (`authed`).
//! Tensors are verified on the way in (announced size bounded, chunks in order, SHA-256,
//! length against the model, finite values) and streamed on the way out from one owned
//! buffer that each chunk only slices.

use std::time::Duration;

use bytes::Bytes;
use fedval_core::model::ModelSpec;
use fedval_core::tensor::{
    DEFAULT_CHUNK_BYTES, Reassembler, check_finite, chunk_ranges, from_le_bytes, sha256_hex,
    to_le_bytes,
};
use fedval_proto::v1;
use fedval_proto::v1::coordinator_client::CoordinatorClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::task::{Task, model_spec_from_proto};

/// Largest gRPC message the client encodes or decodes: 8 MiB, room for a 1-4 MiB chunk.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Largest model the client agrees to download: 1 GiB (256 Mi parameters).
pub const MAX_MODEL_BYTES: usize = 1 << 30;

/// Longest a short call (pull a task, heartbeat) may take before it fails with the
/// retryable [`ClientError::DeadlineExceeded`]; the server long-polls for at most 1 s,
/// so only a hung connection or server reaches it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's answer to an accepted upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadAck {
    /// The round the update was recorded for.
    pub round: u64,
    /// True once the update is durable on the server.
    pub accepted: bool,
}

/// The server's answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The federation's current round.
    pub current_round: u64,
    /// The server's clock, milliseconds since the Unix epoch.
    pub server_time: Duration,
}

/// A node's session with a coordinator: the gRPC client plus the identity every call
/// carries. Shared by the horizontal [`FederationClient`] and the vertical
/// [`VerticalClient`](crate::VerticalClient), which differ only in what they train.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) inner: CoordinatorClient<Channel>,
    federation_id: String,
    client_id: String,
    token: String,
    auth: AsciiMetadataValue,
}

impl Session {
    /// Sends the enrollment request (`num_features` is 0 for a horizontal node) and returns
    /// the session with the server's full answer, which the caller checks for its kind.
    pub(crate) async fn enroll(
        channel: Channel,
        federation_id: &str,
        secret: &str,
        name: &str,
        num_samples: u64,
        num_features: u32,
    ) -> Result<(Self, v1::EnrollResponse), ClientError> {
        Self::enroll_request(
            channel,
            v1::EnrollRequest {
                federation_id: federation_id.to_owned(),
                enrollment_secret: secret.to_owned(),
                client_name: name.to_owned(),
                num_samples,
                num_features,
                cost_per_point: 0.0,
            },
        )
        .await
    }

    /// Sends `request` as the enrollment (any field set, e.g. a FACT node's
    /// `cost_per_point`) and returns the session with the server's full answer.
    pub(crate) async fn enroll_request(
        channel: Channel,
        request: v1::EnrollRequest,
    ) -> Result<(Self, v1::EnrollResponse), ClientError> {
        let federation_id = request.federation_id.clone();
        let mut inner = coordinator(channel);
        let resp = inner.enroll(request).await?.into_inner();
        let auth = bearer(&resp.token).map_err(|e| {
            ClientError::Protocol(format!(
                "server issued a token that is not a valid header: {e}"
            ))
        })?;
        let session = Self {
            inner,
            federation_id,
            client_id: resp.client_id.clone(),
            token: resp.token.clone(),
            auth,
        };
        Ok((session, resp))
    }

    /// A session for an identity obtained earlier; nothing is sent.
    pub(crate) fn resume(
        channel: Channel,
        federation_id: &str,
        client_id: &str,
        token: &str,
    ) -> Result<Self, ClientError> {
        let auth = bearer(token).map_err(|e| {
            ClientError::InvalidInput(format!("token cannot be sent as a header: {e}"))
        })?;
        Ok(Self {
            inner: coordinator(channel),
            federation_id: federation_id.to_owned(),
            client_id: client_id.to_owned(),
            token: token.to_owned(),
            auth,
        })
    }

    /// This node's id in the federation.
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The federation this node belongs to.
    pub(crate) fn federation_id(&self) -> &str {
        &self.federation_id
    }

    /// The bearer token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The next task, as the server sent it.
    pub(crate) async fn pull_task(&mut self) -> Result<v1::Task, ClientError> {
        let mut req = self.authed(v1::PullTaskRequest {
            federation_id: self.federation_id.clone(),
            client_id: self.client_id.clone(),
        });
        req.set_timeout(CALL_TIMEOUT);
        Ok(self.inner.pull_task(req).await?.into_inner())
    }

    /// Tells the server this node is alive; returns the federation's current round.
    pub(crate) async fn heartbeat(&mut self) -> Result<Heartbeat, ClientError> {
        let mut req = self.authed(v1::HeartbeatRequest {
            federation_id: self.federation_id.clone(),
            client_id: self.client_id.clone(),
        });
        req.set_timeout(CALL_TIMEOUT);
        let resp = self.inner.heartbeat(req).await?.into_inner();
        Ok(Heartbeat {
            current_round: resp.current_round,
            server_time: Duration::from_millis(resp.server_time_ms),
        })
    }

    /// Wraps `msg` in a request carrying `authorization: Bearer <token>`.
    pub(crate) fn authed<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        req
    }
}

/// Encodes `values` once for sending: the little-endian bytes (which the stream only
/// slices) and their SHA-256 for the header.
pub(crate) fn encode(values: &[f32]) -> (Bytes, String) {
    let bytes = Bytes::from(to_le_bytes(values));
    let sha256 = sha256_hex(&bytes);
    (bytes, sha256)
}

/// The outgoing tensor stream of both client kinds: `header` first, then
/// `DEFAULT_CHUNK_BYTES` slices of `bytes` wrapped by `chunk`, each made only when the
/// transport asks for it.
pub(crate) fn chunked_stream<M: Send + 'static>(
    header: M,
    bytes: Bytes,
    chunk: fn(v1::TensorChunk) -> M,
) -> impl futures::Stream<Item = M> + Send + 'static {
    let chunks = chunk_ranges(bytes.len(), DEFAULT_CHUNK_BYTES).map(move |range| {
        chunk(v1::TensorChunk {
            offset: range.start as u64,
            data: bytes.slice(range),
        })
    });
    futures::stream::iter(std::iter::once(header).chain(chunks))
}

/// Checks received `bytes` against the `announced` SHA-256 (hex, either case); the error
/// says both hashes.
pub(crate) fn check_sha256(bytes: &[u8], announced: &str) -> Result<(), String> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(announced) {
        Ok(())
    } else {
        Err(format!(
            "checksum mismatch: announced sha256 {announced}, received bytes hash to {actual}"
        ))
    }
}

/// The members every node type ([`FederationClient`], [`VerticalClient`](crate::VerticalClient),
/// [`BanditClient`](crate::BanditClient)) shares, written once: `resume`, the identity
/// accessors, the accessor of its description and `heartbeat`. The type wraps a
/// `session: Session` and one description `$field: $ty` from its enrollment answer,
/// returned by `$field()` (documented by `$what`); `$node` names the node in the docs.
macro_rules! node_identity {
    ($node:literal, $field:ident: $ty:ty, $what:literal) => {
        /// Re-uses an identity obtained by an earlier [`enroll`](Self::enroll) (e.g. after a
        /// restart), with the description that enrollment returned. Nothing is sent: a
        /// wrong token shows up as
        /// [`ClientError::Unauthenticated`](crate::ClientError::Unauthenticated) on the
        /// first call.
        pub fn resume(
            channel: ::tonic::transport::Channel,
            federation_id: &str,
            client_id: &str,
            token: &str,
            $field: $ty,
        ) -> Result<Self, $crate::ClientError> {
            let session =
                $crate::client::Session::resume(channel, federation_id, client_id, token)?;
            Ok(Self { session, $field })
        }

        #[doc = concat!("This ", $node, "'s id in the federation.")]
        pub fn client_id(&self) -> &str {
            self.session.client_id()
        }

        #[doc = concat!("The federation this ", $node, " belongs to.")]
        pub fn federation_id(&self) -> &str {
            self.session.federation_id()
        }

        /// The bearer token (a secret: store it like a password).
        pub fn token(&self) -> &str {
            self.session.token()
        }

        #[doc = $what]
        pub fn $field(&self) -> &$ty {
            &self.$field
        }

        #[doc = concat!(
            "Tells the server this ", $node, " is alive; returns the federation's current round."
        )]
        pub async fn heartbeat(&mut self) -> Result<$crate::Heartbeat, $crate::ClientError> {
            self.session.heartbeat().await
        }
    };
}
pub(crate) use node_identity;

/// A node enrolled in a horizontal federation: its session (identity and bearer token) plus the model it trains.
#[derive(Clone, Debug)]
pub struct FederationClient {
    session: Session,
    model: ModelSpec,
}

impl FederationClient {
    /// Joins `federation_id` with its enrollment secret under the display name `name`,
    /// announcing `num_samples` local samples; the server answers with this node's id, its
    /// bearer token (shown once: keep it to [`resume`](Self::resume) later) and the model.
    ///
    /// A vertical federation's answer (a party description, no model) is refused with a
    /// [`ClientError::Protocol`] naming [`VerticalClient::enroll`](crate::VerticalClient::enroll).
    pub async fn enroll(
        channel: Channel,
        federation_id: &str,
        secret: &str,
        name: &str,
        num_samples: u64,
    ) -> Result<Self, ClientError> {
        let (session, resp) =
            Session::enroll(channel, federation_id, secret, name, num_samples, 0).await?;
        Self::enrolled(federation_id, session, resp)
    }

    /// [`enroll`](Self::enroll) in a FACT federation (ALGORITHMS.md 6): also reports this
    /// node's marginal cost per data point, `cost_per_point` (finite, > 0; the server
    /// answers `INVALID_ARGUMENT` otherwise). The cost sets the points the node must train
    /// on, `m* = sqrt(offset / (2 cost))`, which every train task carries
    /// ([`TrainTask::required_points`](crate::TrainTask::required_points)); training on
    /// fewer is penalised. Outside FACT federations the cost is ignored.
    pub async fn enroll_with_cost(
        channel: Channel,
        federation_id: &str,
        secret: &str,
        name: &str,
        num_samples: u64,
        cost_per_point: f64,
    ) -> Result<Self, ClientError> {
        if !(cost_per_point.is_finite() && cost_per_point > 0.0) {
            return Err(ClientError::InvalidInput(format!(
                "cost_per_point must be a finite number > 0 (the marginal cost of one data \
                 point), got {cost_per_point}"
            )));
        }
        let request = v1::EnrollRequest {
            federation_id: federation_id.to_owned(),
            enrollment_secret: secret.to_owned(),
            client_name: name.to_owned(),
            num_samples,
            num_features: 0,
            cost_per_point,
        };
        let (session, resp) = Session::enroll_request(channel, request).await?;
        Self::enrolled(federation_id, session, resp)
    }

    /// The node for an accepted enrollment: the answer must describe a model.
    fn enrolled(
        federation_id: &str,
        session: Session,
        resp: v1::EnrollResponse,
    ) -> Result<Self, ClientError> {
        let model = match &resp.model {
            Some(spec) => model_spec_from_proto(spec)?,
            None => return Err(wrong_kind(federation_id, &resp)),
        };
        Ok(Self { session, model })
    }

    node_identity!("node", model: ModelSpec, "The federation's model architecture.");

    /// Asks what to do next: train a round, wait, or stop.
    pub async fn pull_task(&mut self) -> Result<Task, ClientError> {
        let task = self.session.pull_task().await?;
        Task::from_proto(task, &self.model)
    }

    /// Downloads global model `version` and returns its parameters, after checking the
    /// chunks against the announced size, the SHA-256 of the first chunk, the model's
    /// parameter count and finiteness.
    pub async fn download_model(&mut self, version: u64) -> Result<Vec<f32>, ClientError> {
        let s = &mut self.session;
        let req = s.authed(v1::DownloadModelRequest {
            federation_id: s.federation_id.clone(),
            client_id: s.client_id.clone(),
            model_version: version,
        });
        let mut stream = s.inner.download_model(req).await?.into_inner();
        let bad = |what: String| ClientError::Protocol(format!("model version {version}: {what}"));

        let first = stream
            .message()
            .await?
            .ok_or_else(|| bad("stream ended before the first chunk".into()))?;
        let total_bytes = first.total_bytes;
        let expected_sha = first.sha256.clone();
        if expected_sha.is_empty() {
            return Err(bad("first chunk carries no sha256".into()));
        }
        let expected = usize::try_from(total_bytes).map_err(|_| {
            bad(format!(
                "announced size {total_bytes} bytes does not fit memory"
            ))
        })?;
        // Refuse a size that does not fit the model before reserving memory for it.
        let want_bytes = self.model.num_params().saturating_mul(4);
        if expected != want_bytes {
            return Err(bad(format!(
                "announces {expected} bytes but the federation's model has {} parameters ({want_bytes} bytes)",
                self.model.num_params()
            )));
        }
        let mut buf =
            Reassembler::new(expected, MAX_MODEL_BYTES).map_err(|e| bad(e.to_string()))?;

        let mut next = Some(first);
        while let Some(msg) = next {
            if msg.model_version != version {
                return Err(bad(format!(
                    "chunk belongs to model version {}",
                    msg.model_version
                )));
            }
            if msg.total_bytes != total_bytes {
                return Err(bad(format!(
                    "chunk announces {} total bytes, the first announced {total_bytes}",
                    msg.total_bytes
                )));
            }
            let chunk = msg
                .chunk
                .ok_or_else(|| bad("message carries no chunk".into()))?;
            buf.push(chunk.offset, &chunk.data)
                .map_err(|e| bad(e.to_string()))?;
            next = stream.message().await?;
        }
        let bytes = buf.finish().map_err(|e| bad(e.to_string()))?;

        check_sha256(&bytes, &expected_sha).map_err(bad)?;
        // `bytes` has exactly `want_bytes`, checked above: one value per parameter.
        let params = from_le_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
        check_finite(&params).map_err(|e| bad(e.to_string()))?;
        Ok(params)
    }

    /// Uploads the update (`local - global`) trained for `round` from global `model_version`
    /// on `num_samples` samples, with local metrics, as one header and 1 MiB chunks.
    ///
    /// The update is encoded once into one buffer; chunks are produced lazily as slices of
    /// it, so even a 50 MB update is never copied per chunk. Updates of the wrong length or
    /// with NaN/inf values are refused locally with [`ClientError::InvalidInput`].
    pub async fn upload_update(
        &mut self,
        round: u64,
        model_version: u64,
        delta: &[f32],
        num_samples: u64,
        metrics: &[(String, f64)],
    ) -> Result<UploadAck, ClientError> {
        let want = self.model.num_params();
        if delta.len() != want {
            return Err(ClientError::InvalidInput(format!(
                "update for round {round} has {} values but the model has {want} parameters",
                delta.len()
            )));
        }
        check_finite(delta).map_err(|e| {
            ClientError::InvalidInput(format!("update for round {round} is not uploadable: {e}"))
        })?;
        let (bytes, sha256) = encode(delta);
        let header = v1::UpdateHeader {
            federation_id: self.session.federation_id.clone(),
            client_id: self.session.client_id.clone(),
            round,
            model_version,
            num_samples,
            metrics: metrics
                .iter()
                .map(|(name, value)| v1::Metric {
                    name: name.clone(),
                    value: *value,
                })
                .collect(),
            total_bytes: bytes.len() as u64,
            sha256,
        };
        let req = self.session.authed(upload_stream(header, bytes));
        let ack = self.session.inner.upload_update(req).await?.into_inner();
        if ack.round != round {
            return Err(ClientError::Protocol(format!(
                "upload for round {round} was acknowledged for round {}",
                ack.round
            )));
        }
        Ok(UploadAck {
            round: ack.round,
            accepted: ack.accepted,
        })
    }
}

/// The Coordinator client with message limits raised for tensor chunks.
/// The error for an enrollment answer of another kind of federation than the node's: it says
/// what the federation is and which node to run instead.
pub(crate) fn wrong_kind(federation_id: &str, resp: &v1::EnrollResponse) -> ClientError {
    let (kind, carries, node) = if resp.bandit.is_some() {
        (
            "a bandit federation",
            "a bandit agent",
            "a bandit node (BanditClient::enroll, fedval-client --bandit)",
        )
    } else if resp.vertical.is_some() {
        (
            "vertical",
            "a vertical party",
            "a vertical node (VerticalClient::enroll, fedval-client --vertical)",
        )
    } else if resp.model.is_some() {
        (
            "horizontal",
            "a model",
            "a horizontal node (FederationClient::enroll)",
        )
    } else {
        return ClientError::Protocol(format!(
            "the enrollment answer of federation {federation_id:?} describes neither a model, \
             a vertical party nor a bandit agent (is the server newer than this client?)"
        ));
    };
    ClientError::Protocol(format!(
        "federation {federation_id:?} is {kind} (the enrollment answer carries {carries}): \
         run {node}"
    ))
}

fn coordinator(channel: Channel) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The upload stream: `header` first, then the chunks of `bytes` (see [`chunked_stream`]).
fn upload_stream(
    header: v1::UpdateHeader,
    bytes: Bytes,
) -> impl futures::Stream<Item = v1::UploadMessage> + Send + 'static {
    use v1::upload_message::Kind;
    let first = v1::UploadMessage {
        kind: Some(Kind::Header(header)),
    };
    chunked_stream(first, bytes, |c| v1::UploadMessage {
        kind: Some(Kind::Chunk(c)),
    })
}

/// The `authorization` header value for `token`.
fn bearer(
    token: &str,
) -> Result<AsciiMetadataValue, tonic::metadata::errors::InvalidMetadataValue> {
    MetadataValue::try_from(format!("Bearer {token}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake;
    use futures::StreamExt;
    use v1::upload_message::Kind;

    /// Every kind of enrollment answer names its federation kind and the node to run.
    #[test]
    fn a_wrong_kind_of_federation_names_the_node_to_run() {
        let bandit = v1::EnrollResponse {
            bandit: Some(v1::BanditAgent::default()),
            ..Default::default()
        };
        let vertical = v1::EnrollResponse {
            vertical: Some(v1::VerticalParty::default()),
            ..Default::default()
        };
        let horizontal = v1::EnrollResponse {
            model: Some(v1::ModelSpec::default()),
            ..Default::default()
        };
        for (resp, kind, node) in [
            (bandit, "is a bandit federation", "BanditClient::enroll"),
            (vertical, "is vertical", "VerticalClient::enroll"),
            (horizontal, "is horizontal", "FederationClient::enroll"),
        ] {
            let err = wrong_kind("f", &resp).to_string();
            assert!(err.contains(kind) && err.contains(node), "{err}");
        }
        let err = wrong_kind("f", &v1::EnrollResponse::default()).to_string();
        assert!(err.contains("describes neither"), "{err}");
    }

    #[tokio::test]
    async fn upload_stream_is_header_then_contiguous_slices() {
        let values: Vec<f32> = (0..(DEFAULT_CHUNK_BYTES / 4 * 2 + 3))
            .map(|i| i as f32)
            .collect();
        let bytes = Bytes::from(to_le_bytes(&values));
        let header = v1::UpdateHeader {
            round: 4,
            total_bytes: bytes.len() as u64,
            ..Default::default()
        };
        let msgs: Vec<_> = upload_stream(header.clone(), bytes.clone()).collect().await;
        assert_eq!(msgs.len(), 4, "header + 2 full chunks + 1 partial");
        assert_eq!(msgs[0].kind, Some(Kind::Header(header)));
        let mut offset = 0u64;
        for msg in &msgs[1..] {
            let Some(Kind::Chunk(chunk)) = &msg.kind else {
                panic!("expected a chunk, got {msg:?}");
            };
            assert_eq!(chunk.offset, offset);
            assert!(chunk.data.len() <= DEFAULT_CHUNK_BYTES);
            let start = offset as usize;
            assert_eq!(chunk.data, bytes.slice(start..start + chunk.data.len()));
            // A slice shares the buffer instead of copying it.
            assert_eq!(chunk.data.as_ptr(), bytes[start..].as_ptr());
            offset += chunk.data.len() as u64;
        }
        assert_eq!(offset, bytes.len() as u64);
    }

    fn spec() -> ModelSpec {
        ModelSpec::LogisticRegression {
            num_features: 2,
            num_classes: 3,
        }
    }

    /// A fake serving a model of `spec()`'s size (9 parameters, 36 bytes, 5 chunks).
    async fn fake() -> fake::Running {
        let model = (0..spec().num_params())
            .map(|i| i as f32 * 0.5 - 1.0)
            .collect();
        fake::start(
            spec(),
            fake::Script {
                model,
                ..Default::default()
            },
        )
        .await
    }

    async fn enrolled(f: &fake::Running) -> FederationClient {
        let channel = crate::connect(&f.url).await.unwrap();
        FederationClient::enroll(channel, "demo", "secret", "node-a", 10)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn enroll_then_download_reassembles_the_model() {
        let f = fake().await;
        let mut c = enrolled(&f).await;
        assert_eq!((c.client_id(), c.token()), (fake::CLIENT_ID, fake::TOKEN));
        assert_eq!(c.model(), &spec());
        let expected = f.script().model.clone();
        assert_eq!(c.download_model(3).await.unwrap(), expected);
        assert_eq!(c.heartbeat().await.unwrap().current_round, 1);
    }

    #[tokio::test]
    async fn enroll_with_cost_refuses_an_unusable_cost_before_sending() {
        let f = fake().await;
        let channel = crate::connect(&f.url).await.unwrap();
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err =
                FederationClient::enroll_with_cost(channel.clone(), "demo", "secret", "a", 1, bad)
                    .await
                    .unwrap_err();
            assert!(
                matches!(&err, ClientError::InvalidInput(m) if m.contains(&format!("got {bad}"))),
                "{err:?}"
            );
        }
        assert!(f.script().enrollments.is_empty(), "nothing was sent");
        let c = FederationClient::enroll_with_cost(channel, "demo", "secret", "a", 1, 0.25)
            .await
            .unwrap();
        assert_eq!(c.model(), &spec());
        assert_eq!(f.script().enrollments, vec![("a".to_string(), 0)]);
    }

    #[tokio::test]
    async fn wrong_secret_and_wrong_token_are_unauthenticated() {
        let f = fake().await;
        let channel = crate::connect(&f.url).await.unwrap();
        let err = FederationClient::enroll(channel.clone(), "demo", "nope", "a", 1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Unauthenticated(ref m) if m == "wrong enrollment secret")
        );
        let mut c =
            FederationClient::resume(channel, "demo", fake::CLIENT_ID, "stale", spec()).unwrap();
        let err = c.pull_task().await.unwrap_err();
        assert!(matches!(err, ClientError::Unauthenticated(_)), "{err:?}");
    }

    #[tokio::test]
    async fn download_refuses_checksum_mismatch_and_wrong_length() {
        let f = fake().await;
        let mut c = enrolled(&f).await;
        f.script().bad_sha = Some("00".repeat(32));
        let err = c.download_model(1).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        {
            let mut s = f.script();
            s.bad_sha = None;
            s.model.push(1.0);
        }
        let err = c.download_model(1).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: model version 1: announces 40 bytes but the federation's model has 9 parameters (36 bytes)"
        );
    }

    #[tokio::test]
    async fn upload_sends_header_and_exact_bytes() {
        let f = fake().await;
        let mut c = enrolled(&f).await;
        let delta: Vec<f32> = (0..9).map(|i| i as f32 * -0.25).collect();
        let metrics = vec![("train_loss".to_owned(), 0.5)];
        let ack = c.upload_update(4, 3, &delta, 10, &metrics).await.unwrap();
        assert_eq!(
            ack,
            UploadAck {
                round: 4,
                accepted: true
            }
        );
        let s = f.script();
        let (header, bytes) = &s.uploads[0];
        assert_eq!(bytes, &to_le_bytes(&delta));
        assert_eq!(
            (
                header.round,
                header.model_version,
                header.num_samples,
                header.total_bytes
            ),
            (4, 3, 10, 36)
        );
        assert_eq!(header.sha256, sha256_hex(bytes));
        assert_eq!(
            (header.federation_id.as_str(), header.client_id.as_str()),
            ("demo", fake::CLIENT_ID)
        );
        assert_eq!(
            header.metrics,
            vec![v1::Metric {
                name: "train_loss".into(),
                value: 0.5
            }]
        );
    }

    #[tokio::test]
    async fn upload_refuses_bad_updates_locally() {
        let f = fake().await;
        let mut c = enrolled(&f).await;
        let err = c.upload_update(1, 0, &[0.0; 8], 1, &[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input: update for round 1 has 8 values but the model has 9 parameters"
        );
        let mut nan = vec![0.0; 9];
        nan[2] = f32::NAN;
        let err = c.upload_update(1, 0, &nan, 1, &[]).await.unwrap_err();
        assert!(err.to_string().contains("index 2 is NaN"), "{err}");
        assert!(f.script().uploads.is_empty());
    }

    #[test]
    fn bearer_rejects_tokens_that_cannot_be_headers() {
        assert_eq!(bearer("abc").unwrap(), "Bearer abc");
        assert!(bearer("line\nbreak").is_err());
    }
}
