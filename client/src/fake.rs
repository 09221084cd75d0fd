//! A scripted in-process Coordinator for the SDK's own tests (compiled only under test).
//!
//! It serves the real generated gRPC service on `127.0.0.1:0`, checks the bearer token on
//! every call, answers `PullTask`, `UploadUpdate` and `ExchangeEmbeddings` from scripted
//! queues, serves one model and the scripted gradients in small chunks (so reassembly across
//! chunks is exercised) and records what it received. With [`Script::vertical`] set it
//! enrolls vertical parties.
//! The end-to-end tests against the real server live in the `tests/` crate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fedval_core::model::ModelSpec;
use fedval_core::tensor::{Reassembler, chunk_ranges, sha256_hex, to_le_bytes};
use fedval_proto::v1;
use fedval_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use ndarray::Array2;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::run::{NodeEvent, RunOptions};

/// Run options for the task-loop tests: two quick retries, millisecond waits, no
/// heartbeat, and every event pushed onto `events`.
pub fn run_options(events: &Arc<Mutex<Vec<NodeEvent>>>) -> RunOptions {
    let sink = Arc::clone(events);
    RunOptions {
        max_retries: 2,
        initial_backoff: Duration::from_millis(1),
        max_wait: Duration::from_millis(5),
        heartbeat_interval: None,
        on_event: Some(Arc::new(move |e| sink.lock().unwrap().push(e))),
    }
}

/// Token the fake issues at enrollment.
pub const TOKEN: &str = "tok-123";
/// Client id the fake issues at enrollment.
pub const CLIENT_ID: &str = "client-1";

/// What the fake answers and what it saw.
#[derive(Default)]
pub struct Script {
    /// Answers to successive PullTask calls; an empty queue answers "done".
    pub tasks: VecDeque<Result<v1::Task, Status>>,
    /// Answers to successive uploads: `None` (or an empty queue) accepts, `Some` refuses.
    pub upload_replies: VecDeque<Option<Status>>,
    /// The served model (any version).
    pub model: Vec<f32>,
    /// Overrides the announced sha256 of the model.
    pub bad_sha: Option<String>,
    /// Headers and bytes of uploads received.
    pub uploads: Vec<(v1::UpdateHeader, Vec<u8>)>,
    /// Number of DownloadModel calls.
    pub downloads: usize,
    /// When set, the federation is vertical: enrollment answers with this party
    /// description and no model.
    pub vertical: Option<v1::VerticalParty>,
    /// Answers to successive ExchangeEmbeddings calls; an empty queue is an error.
    pub exchanges: VecDeque<ExchangeReply>,
    /// Headers and bytes of the embeddings received (including exchanges answered with
    /// an error).
    pub embeddings: Vec<(v1::EmbeddingHeader, Vec<u8>)>,
    /// `(name, num_features)` of every enrollment.
    pub enrollments: Vec<(String, u32)>,
}

/// One scripted answer to ExchangeEmbeddings.
pub enum ExchangeReply {
    /// Stream this header, then `values` in 8-byte chunks.
    Gradients {
        /// Sent as is (tests corrupt it on purpose).
        header: v1::GradientHeader,
        /// Row-major gradient values.
        values: Vec<f32>,
    },
    /// Fail the call with this status.
    Fail(Status),
}

impl ExchangeReply {
    /// A well-formed answer for `round` carrying `g` (rows x output_dim) and `loss`.
    pub fn gradients(round: u64, g: &Array2<f32>, loss: f64) -> Self {
        let values: Vec<f32> = g.iter().copied().collect();
        let bytes = to_le_bytes(&values);
        ExchangeReply::Gradients {
            header: v1::GradientHeader {
                round,
                rows: g.nrows() as u32,
                output_dim: g.ncols() as u32,
                total_bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
                loss,
            },
            values,
        }
    }

    /// The answer to an evaluation pass: no rows, only the loss.
    pub fn evaluation(round: u64, loss: f64) -> Self {
        Self::gradients(round, &Array2::zeros((0, 0)), loss)
    }
}

/// The fake service; clones share one script.
#[derive(Clone)]
pub struct FakeCoordinator {
    spec: ModelSpec,
    script: Arc<Mutex<Script>>,
}

/// A running fake: its URL, its shared script and the handle that stops it when dropped.
pub struct Running {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Shared with the service.
    pub script: Arc<Mutex<Script>>,
    _stop: oneshot::Sender<()>,
}

impl Running {
    /// Locks the script.
    pub fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }
}

/// Starts a fake for `spec` with `script` on a loopback port (bound before serving).
pub async fn start(spec: ModelSpec, script: Script) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(script));
    let svc = FakeCoordinator {
        spec,
        script: Arc::clone(&script),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(svc))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    Running {
        url,
        script,
        _stop: stop,
    }
}

impl FakeCoordinator {
    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }
}

/// One message of a header-then-chunks upload stream: the header (with the total byte
/// count it announces) or a chunk.
enum Part<H> {
    Header(u64, H),
    Chunk(v1::TensorChunk),
}

/// Reads a header-then-chunks stream (`split` names each message's part) and reassembles
/// the bytes, refusing a stream that does not open with its header or sends a second one.
async fn reassemble<M, H>(
    mut stream: Streaming<M>,
    split: impl Fn(M) -> Option<Part<H>>,
) -> Result<(H, Vec<u8>), Status> {
    let bad = |e: String| Status::invalid_argument(e);
    let Some(Part::Header(total_bytes, header)) = stream.message().await?.and_then(&split) else {
        return Err(bad("first message must be a header".into()));
    };
    let mut buf =
        Reassembler::new(total_bytes as usize, 1 << 30).map_err(|e| bad(e.to_string()))?;
    while let Some(msg) = stream.message().await? {
        let Some(Part::Chunk(c)) = split(msg) else {
            return Err(bad("expected a chunk".into()));
        };
        buf.push(c.offset, &c.data)
            .map_err(|e| bad(e.to_string()))?;
    }
    let bytes = buf.finish().map_err(|e| bad(e.to_string()))?;
    Ok((header, bytes))
}

/// Fails unless the request carries the fake's bearer token.
fn check_auth<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get("authorization").map(|v| v.to_str()) {
        Some(Ok(v)) if v == format!("Bearer {TOKEN}") => Ok(()),
        _ => Err(Status::unauthenticated("missing or wrong bearer token")),
    }
}

#[tonic::async_trait]
impl Coordinator for FakeCoordinator {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let req = req.into_inner();
        if req.enrollment_secret != "secret" {
            return Err(Status::unauthenticated("wrong enrollment secret"));
        }
        let mut script = self.script();
        script.enrollments.push((req.client_name, req.num_features));
        let vertical = script.vertical.clone();
        let model = match vertical {
            Some(_) => None,
            None => Some(v1::ModelSpec::from(&self.spec)),
        };
        Ok(Response::new(v1::EnrollResponse {
            vertical,
            client_id: CLIENT_ID.into(),
            token: TOKEN.into(),
            model,
            bandit: None,
        }))
    }

    async fn pull_task(
        &self,
        req: Request<v1::PullTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        check_auth(&req)?;
        let next = self.script().tasks.pop_front();
        let done = || v1::Task {
            kind: Some(v1::task::Kind::Done(v1::DoneTask {
                final_model_version: 0,
                reason: "script over".into(),
            })),
        };
        next.unwrap_or_else(|| Ok(done())).map(Response::new)
    }

    type ExchangeEmbeddingsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::GradientMessage, Status>> + Send>,
    >;

    async fn exchange_embeddings(
        &self,
        req: Request<Streaming<v1::EmbeddingMessage>>,
    ) -> Result<Response<Self::ExchangeEmbeddingsStream>, Status> {
        use v1::embedding_message::Kind;
        check_auth(&req)?;
        let (header, bytes) = reassemble(req.into_inner(), |m| match m.kind {
            Some(Kind::Header(h)) => Some(Part::Header(h.total_bytes, h)),
            Some(Kind::Chunk(c)) => Some(Part::Chunk(c)),
            None => None,
        })
        .await?;
        let mut script = self.script();
        script.embeddings.push((header, bytes));
        let (header, values) = match script.exchanges.pop_front() {
            Some(ExchangeReply::Gradients { header, values }) => (header, values),
            Some(ExchangeReply::Fail(status)) => return Err(status),
            None => return Err(Status::internal("the script has no exchange reply left")),
        };
        let first = v1::GradientMessage {
            kind: Some(v1::gradient_message::Kind::Header(header)),
        };
        let bytes = to_le_bytes(&values);
        let chunks = chunk_ranges(bytes.len(), 8).map(|r| v1::GradientMessage {
            kind: Some(v1::gradient_message::Kind::Chunk(v1::TensorChunk {
                offset: r.start as u64,
                data: bytes::Bytes::copy_from_slice(&bytes[r]),
            })),
        });
        let messages: Vec<Result<v1::GradientMessage, Status>> =
            std::iter::once(first).chain(chunks).map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    type DownloadModelStream =
        futures::stream::Iter<std::vec::IntoIter<Result<v1::ModelChunk, Status>>>;

    async fn download_model(
        &self,
        req: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        check_auth(&req)?;
        let version = req.get_ref().model_version;
        let mut script = self.script();
        script.downloads += 1;
        let bytes = to_le_bytes(&script.model);
        let sha = script.bad_sha.clone().unwrap_or_else(|| sha256_hex(&bytes));
        let chunks: Vec<_> = chunk_ranges(bytes.len(), 8)
            .enumerate()
            .map(|(i, r)| {
                Ok(v1::ModelChunk {
                    model_version: version,
                    total_bytes: bytes.len() as u64,
                    chunk: Some(v1::TensorChunk {
                        offset: r.start as u64,
                        data: bytes::Bytes::copy_from_slice(&bytes[r]),
                    }),
                    sha256: if i == 0 { sha.clone() } else { String::new() },
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(chunks)))
    }

    async fn upload_update(
        &self,
        req: Request<Streaming<v1::UploadMessage>>,
    ) -> Result<Response<v1::UploadAck>, Status> {
        use v1::upload_message::Kind;
        check_auth(&req)?;
        let (header, bytes) = reassemble(req.into_inner(), |m| match m.kind {
            Some(Kind::Header(h)) => Some(Part::Header(h.total_bytes, h)),
            Some(Kind::Chunk(c)) => Some(Part::Chunk(c)),
            None => None,
        })
        .await?;
        let mut script = self.script();
        if let Some(Some(status)) = script.upload_replies.pop_front() {
            return Err(status);
        }
        let round = header.round;
        script.uploads.push((header, bytes));
        Ok(Response::new(v1::UploadAck {
            round,
            accepted: true,
        }))
    }

    async fn submit_bandit(
        &self,
        req: Request<v1::BanditSubmission>,
    ) -> Result<Response<v1::BanditAck>, Status> {
        check_auth(&req)?;
        Err(Status::unimplemented(
            "the fake coordinator runs no bandits",
        ))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        check_auth(&req)?;
        Ok(Response::new(v1::HeartbeatResponse {
            current_round: 1,
            server_time_ms: 5,
        }))
    }
}
