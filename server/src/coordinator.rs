//! The client-facing `fedval.v1.Coordinator` gRPC service.
//!
//! Handlers decode, authenticate, call the federation, and encode. Every client
//! input is untrusted: sizes are bounded before data is read, a client has at most
//! one upload in progress, an upload must finish before its round's deadline, tensors
//! are checked for length, checksum and finiteness, and nothing is acknowledged before
//! it is durable. Domain errors become statuses in `error.rs` only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fedval_core::tensor::{self, Reassembler};
use fedval_proto::v1 as pb;
use fedval_proto::v1::coordinator_server::Coordinator;
use futures::Stream;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{Federation, NextTask, UploadClaim};
use crate::registry::Registry;
use crate::vertical::exchange::CLOSE_GRACE;
use crate::vertical::{Admission, EmbeddingClaim, MAX_EMBEDDING_ABS};

/// Largest model chunk the service sends: well under the 8 MiB clients decode.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// How long an upload may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Implementation of the Coordinator service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    registry: Arc<Registry>,
    chunk_bytes: usize,
}

impl CoordinatorService {
    /// A service over `registry` that streams models in chunks of `chunk_bytes`, clamped
    /// to `4..=MAX_CHUNK_BYTES` so no chunk exceeds what clients decode.
    pub fn new(registry: Arc<Registry>, chunk_bytes: usize) -> Self {
        CoordinatorService {
            registry,
            chunk_bytes: chunk_bytes.clamp(4, MAX_CHUNK_BYTES),
        }
    }

    /// The federation `federation_id`, after checking the caller's bearer token is
    /// `client_id`'s.
    async fn authorized<T>(
        &self,
        request: &Request<T>,
        federation_id: &str,
        client_id: &str,
    ) -> ServiceResult<Arc<Federation>> {
        let token = auth::bearer_from_metadata(request.metadata())?;
        let fed = self.registry.get(federation_id)?;
        fed.authenticate(token, client_id).await?;
        Ok(fed)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ModelChunk, Status>> + Send>>;
type GradientStream = Pin<Box<dyn Stream<Item = Result<pb::GradientMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let req = request.into_inner();
        let fed = self.registry.get(&req.federation_id)?;
        let (client_id, token) = fed
            .enroll(
                &req.enrollment_secret,
                &req.client_name,
                req.num_samples,
                req.num_features,
                req.cost_per_point,
            )
            .await?;
        let config = fed.config();
        Ok(Response::new(pb::EnrollResponse {
            client_id,
            token,
            model: config.model.as_ref().map(Into::into),
            vertical: config.vertical.as_ref().map(|v| pb::VerticalParty {
                output_dim: u32::try_from(v.output_dim()).unwrap_or(u32::MAX),
                hidden: v.hidden,
                learning_rate: v.learning_rate,
                l2: v.l2,
                seed: config.seed,
                training: v.training.as_str().into(),
            }),
            bandit: config.bandit.as_ref().map(|b| pb::BanditAgent {
                dim: b.dim,
                lambda: b.lambda,
                alpha: b.alpha,
                threshold: b.threshold,
                horizon: b.horizon,
            }),
        }))
    }

    async fn pull_task(
        &self,
        request: Request<pb::PullTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let req = request.get_ref();
        let fed = self
            .authorized(&request, &req.federation_id, &req.client_id)
            .await?;
        let client_id = &req.client_id;
        let mut changes = fed.subscribe_changes();
        let mut task = fed.next_task(client_id).await;
        // Long poll: answer as soon as something changes, or after a bounded wait. A
        // bandit federation hands the turn from client to client every few milliseconds,
        // so there the poll waits for a change that gives THIS client something to do:
        // a step must not wait for a client's polling interval.
        let until = Instant::now() + fed.long_poll();
        let persistent = fed.config().bandit.is_some();
        while matches!(task, NextTask::Wait { .. }) {
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => task = fed.next_task(client_id).await,
                Ok(Err(_)) | Err(_) => break,
            }
            if !persistent {
                break;
            }
        }
        Ok(Response::new(task_to_proto(&fed, task)))
    }

    type DownloadModelStream = ChunkStream;
    type ExchangeEmbeddingsStream = GradientStream;

    async fn exchange_embeddings(
        &self,
        request: Request<Streaming<pb::EmbeddingMessage>>,
    ) -> Result<Response<Self::ExchangeEmbeddingsStream>, Status> {
        let (token, mut stream, header) =
            open_transfer(request, "EmbeddingHeader", "exchange", |m| match m.kind {
                Some(pb::embedding_message::Kind::Header(h)) => Some(h),
                _ => None,
            })
            .await?;
        let fed = self.registry.get(&header.federation_id)?;
        fed.authenticate(&token, &header.client_id).await?;
        let claim = EmbeddingClaim {
            client_id: header.client_id.clone(),
            round: header.round,
            rows: header.rows,
            output_dim: header.output_dim,
            total_bytes: header.total_bytes,
            sha256: header.sha256.to_ascii_lowercase(),
        };
        let admission = fed.admit_embeddings(&claim).await?;
        let (expected, deadline) = match admission {
            Admission::Open {
                expected_bytes,
                deadline,
            } => (expected_bytes, deadline),
            Admission::Replay { expected_bytes } => (expected_bytes, Instant::now() + CLOSE_GRACE),
        };
        // One transfer per client at a time, and none outliving its round.
        let slot = fed.begin_upload(&header.client_id)?;
        let bytes = receive_chunks(
            &mut stream,
            deadline,
            expected,
            |m| match m.kind {
                Some(pb::embedding_message::Kind::Chunk(c)) => Some(c),
                _ => None,
            },
            || format!(
                "round {} closed before the embeddings arrived (its deadline passed); they were not accepted",
                claim.round
            ),
        )
        .await?;
        drop(slot);
        let values = checked_embeddings(&bytes, &claim.sha256)?;
        if let Admission::Open { .. } = admission {
            fed.accept_embeddings(&header.client_id, claim.round, values)
                .await?;
        }
        let reply = fed
            .gradient_reply(&header.client_id, claim.round, deadline + CLOSE_GRACE)
            .await?;
        let mut messages = vec![Ok(pb::GradientMessage {
            kind: Some(pb::gradient_message::Kind::Header(pb::GradientHeader {
                round: reply.round,
                rows: reply.rows,
                output_dim: reply.output_dim,
                total_bytes: reply.bytes.len() as u64,
                sha256: reply.sha256.clone(),
                loss: reply.loss,
            })),
        })];
        messages.extend(
            tensor::chunk_ranges(reply.bytes.len(), self.chunk_bytes).map(|range| {
                Ok(pb::GradientMessage {
                    kind: Some(pb::gradient_message::Kind::Chunk(pb::TensorChunk {
                        offset: range.start as u64,
                        data: reply.bytes.slice(range),
                    })),
                })
            }),
        );
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn download_model(
        &self,
        request: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let req = request.get_ref();
        let fed = self
            .authorized(&request, &req.federation_id, &req.client_id)
            .await?;
        // In an RFFL federation each client downloads its own model.
        let model = fed.model_for(&req.client_id, req.model_version).await?;
        let total = model.bytes.len();
        let chunks: Vec<Result<pb::ModelChunk, Status>> =
            tensor::chunk_ranges(total, self.chunk_bytes)
                .enumerate()
                .map(|(i, range)| {
                    Ok(pb::ModelChunk {
                        model_version: model.version,
                        total_bytes: total as u64,
                        chunk: Some(pb::TensorChunk {
                            offset: range.start as u64,
                            data: model.bytes.slice(range),
                        }),
                        sha256: if i == 0 {
                            model.sha256.clone()
                        } else {
                            String::new()
                        },
                    })
                })
                .collect();
        // An empty model still answers with one (empty) chunk carrying the checksum.
        let chunks = if chunks.is_empty() {
            vec![Ok(pb::ModelChunk {
                model_version: model.version,
                total_bytes: 0,
                chunk: Some(pb::TensorChunk {
                    offset: 0,
                    data: Default::default(),
                }),
                sha256: model.sha256.clone(),
            })]
        } else {
            chunks
        };
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<pb::UploadMessage>>,
    ) -> Result<Response<pb::UploadAck>, Status> {
        let (token, mut stream, header) =
            open_transfer(request, "UpdateHeader", "upload", |m| match m.kind {
                Some(pb::upload_message::Kind::Header(h)) => Some(h),
                _ => None,
            })
            .await?;
        let fed = self.registry.get(&header.federation_id)?;
        fed.authenticate(&token, &header.client_id).await?;
        let claim = UploadClaim {
            round: header.round,
            model_version: header.model_version,
            num_samples: header.num_samples,
            metrics: header
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.value))
                .collect(),
            total_bytes: header.total_bytes,
            sha256: header.sha256.to_ascii_lowercase(),
        };
        let admitted = fed.check_claim(&header.client_id, &claim).await?;
        // One upload per client at a time, and none outliving its round: a client cannot
        // make the server hold many model-sized buffers, or one for ever.
        let _slot = fed.begin_upload(&header.client_id)?;
        let bytes = receive_chunks(
            &mut stream,
            admitted.deadline,
            admitted.expected_bytes,
            |m| match m.kind {
                Some(pb::upload_message::Kind::Chunk(c)) => Some(c),
                _ => None,
            },
            || format!(
                "round {} closed before the upload finished (its deadline passed); the update was not accepted",
                claim.round
            ),
        )
        .await?;
        let delta = checked_tensor(
            &bytes,
            &claim.sha256,
            "the update was corrupted or truncated, upload it again",
        )?;
        let round = fed.accept_update(&header.client_id, claim, delta).await?;
        Ok(Response::new(pb::UploadAck {
            round,
            accepted: true,
        }))
    }

    async fn submit_bandit(
        &self,
        request: Request<pb::BanditSubmission>,
    ) -> Result<Response<pb::BanditAck>, Status> {
        let req = request.get_ref();
        let fed = self
            .authorized(&request, &req.federation_id, &req.client_id)
            .await?;
        let Some(settings) = fed.config().bandit else {
            return Err(ServiceError::FailedPrecondition(format!(
                "federation `{}` is not a bandit federation; SubmitBandit does not apply",
                fed.id()
            ))
            .into());
        };
        let req = request.into_inner();
        let submission = crate::bandit::Submission::from_proto(req.kind, &settings)?;
        fed.submit_bandit(&req.client_id, submission).await?;
        Ok(Response::new(pb::BanditAck { accepted: true }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.get_ref();
        let fed = self
            .authorized(&request, &req.federation_id, &req.client_id)
            .await?;
        let (record, _) = fed.snapshot().await;
        Ok(Response::new(pb::HeartbeatResponse {
            current_round: record.committed_rounds.saturating_add(1),
            server_time_ms: crate::federation::now_ms(),
        }))
    }
}

/// Opens a chunked transfer (an upload or an exchange): reads the caller's bearer token
/// and the stream's first message, which must be a header (`header_of` extracts it;
/// `None`: not a header) arriving within [`HEADER_TIMEOUT`]. `header` and `transfer`
/// name the header message and the transfer in errors.
async fn open_transfer<M, H>(
    request: Request<Streaming<M>>,
    header: &str,
    transfer: &str,
    header_of: impl FnOnce(M) -> Option<H>,
) -> Result<(String, Streaming<M>, H), Status> {
    let token = auth::bearer_from_metadata(request.metadata())
        .map_err(ServiceError::from)?
        .to_string();
    let mut stream = request.into_inner();
    let first = tokio::time::timeout(HEADER_TIMEOUT, stream.message())
        .await
        .map_err(|_| {
            ServiceError::InvalidArgument(format!(
                "no {header} within {} s of opening the {transfer}; send the header first",
                HEADER_TIMEOUT.as_secs()
            ))
        })?
        .map_err(stream_error)?;
    match first.and_then(header_of) {
        Some(h) => Ok((token, stream, h)),
        None => Err(ServiceError::InvalidArgument(format!(
            "an {transfer} must start with an {header} message"
        ))
        .into()),
    }
}

/// Receives the chunks that follow a header (an upload's or an exchange's), in order,
/// into `expected` bytes before `deadline`; `chunk_of` extracts a message's chunk
/// (`None`: not a chunk), and `closed` says why a transfer that missed the deadline was
/// refused.
async fn receive_chunks<M>(
    stream: &mut Streaming<M>,
    deadline: Instant,
    expected: usize,
    chunk_of: impl Fn(M) -> Option<pb::TensorChunk>,
    closed: impl FnOnce() -> String,
) -> Result<Vec<u8>, Status> {
    tokio::time::timeout_at(deadline, reassemble(stream, expected, chunk_of))
        .await
        .map_err(|_| ServiceError::FailedPrecondition(closed()))?
}

/// The untimed part of [`receive_chunks`]: reassembles the chunks into `expected` bytes.
async fn reassemble<M>(
    stream: &mut Streaming<M>,
    expected: usize,
    chunk_of: impl Fn(M) -> Option<pb::TensorChunk>,
) -> Result<Vec<u8>, Status> {
    let mut data = Reassembler::new(expected, expected).map_err(ServiceError::from)?;
    while let Some(msg) = stream.message().await.map_err(stream_error)? {
        match chunk_of(msg) {
            Some(c) => data.push(c.offset, &c.data).map_err(ServiceError::from)?,
            None => {
                return Err(ServiceError::InvalidArgument(
                    "only TensorChunk messages may follow the header".into(),
                )
                .into());
            }
        }
    }
    Ok(data.finish().map_err(ServiceError::from)?)
}

/// Decodes received tensor bytes after checking their checksum against the header's
/// `sha256` (`mismatch` ends the error: what was corrupted and what to do) and their
/// finiteness.
fn checked_tensor(bytes: &[u8], sha256: &str, mismatch: &str) -> ServiceResult<Vec<f32>> {
    let digest = tensor::sha256_hex(bytes);
    if digest != sha256 {
        return Err(ServiceError::InvalidArgument(format!(
            "checksum mismatch: the header says sha256 {sha256}, the received bytes hash to {digest}; {mismatch}"
        )));
    }
    let values = tensor::from_le_bytes(bytes)?;
    tensor::check_finite(&values)?;
    Ok(values)
}

/// Decodes received embedding bytes after checking their checksum, finiteness and
/// magnitude (at most [`MAX_EMBEDDING_ABS`]).
fn checked_embeddings(bytes: &[u8], sha256: &str) -> ServiceResult<Vec<f32>> {
    let values = checked_tensor(
        bytes,
        sha256,
        "the embeddings were corrupted or truncated, send them again",
    )?;
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| v.abs() > MAX_EMBEDDING_ABS)
    {
        return Err(ServiceError::InvalidArgument(format!(
            "embedding value {v} at index {i} exceeds the accepted magnitude {MAX_EMBEDDING_ABS}; lower the learning rate or rescale the features"
        )));
    }
    Ok(values)
}

/// A failure reading the upload stream; an oversized message (tonic's OUT_OF_RANGE)
/// becomes RESOURCE_EXHAUSTED with what to do, as DESIGN.md promises.
fn stream_error(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        ServiceError::ResourceExhausted(format!(
            "{}; send the tensor in chunks of at most {} bytes",
            status.message(),
            fedval_core::tensor::DEFAULT_CHUNK_BYTES
        ))
        .into()
    } else {
        status
    }
}

fn task_to_proto(fed: &Federation, task: NextTask) -> pb::Task {
    use pb::task::Kind;
    let config = fed.config();
    let kind = match task {
        NextTask::Train {
            round,
            model_version,
            deadline_ms,
            required_points,
        } => Kind::Train(pb::TrainTask {
            round,
            model_version,
            params: Some(pb::TrainingParams {
                local_epochs: config.training.local_epochs,
                batch_size: config.training.batch_size,
                learning_rate: config.training.learning_rate,
                seed: config.training.seed,
            }),
            deadline_ms,
            model: config.model.as_ref().map(Into::into),
            required_points,
        }),
        NextTask::Wait { reason } => Kind::Wait(pb::WaitTask {
            retry_after_ms: 50,
            reason,
        }),
        NextTask::Done {
            final_model_version,
            reason,
        } => Kind::Done(pb::DoneTask {
            final_model_version,
            reason,
        }),
        NextTask::Removed { round, reason } => Kind::Removed(pb::RemovedTask { round, reason }),
        NextTask::Embed {
            round,
            sample_ids,
            evaluate_only,
            deadline_ms,
        } => Kind::Embed(pb::EmbedTask {
            round,
            sample_ids: sample_ids.to_vec(),
            output_dim: config
                .vertical
                .as_ref()
                .map_or(0, |v| u32::try_from(v.output_dim()).unwrap_or(u32::MAX)),
            evaluate_only,
            deadline_ms,
        }),
        NextTask::Bandit(task) => Kind::Bandit(task.to_proto()),
    };
    pb::Task { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn chunk_size_is_clamped_to_what_clients_decode() {
        let registry = Registry::open(Store::memory()).expect("registry");
        assert_eq!(CoordinatorService::new(registry.clone(), 0).chunk_bytes, 4);
        assert_eq!(
            CoordinatorService::new(registry.clone(), 64 << 20).chunk_bytes,
            MAX_CHUNK_BYTES
        );
        assert_eq!(
            CoordinatorService::new(registry, 1 << 20).chunk_bytes,
            1 << 20
        );
    }

    #[test]
    fn an_oversized_stream_message_is_resource_exhausted() {
        let s = stream_error(Status::out_of_range("decoded message length too large"));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(
            s.message().contains("chunks of at most 1048576 bytes"),
            "{s:?}"
        );
        let s = stream_error(Status::cancelled("gone"));
        assert_eq!(s.code(), tonic::Code::Cancelled);
    }
}
