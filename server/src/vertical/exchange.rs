//! The federation side of `ExchangeEmbeddings`: admitting a header before its data,
//! making a party's embeddings durable and recording them in the open pass, and waiting
//! for (or looking up) the gradients of a closed pass.
//!
//! The gRPC handler (`coordinator`) receives and checks the bytes in between; every
//! refusal here is a [`ServiceError`] that `error.rs` maps onto a status.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::steps::{StepStatus, check_step};
use super::{GradientReply, OpenPass};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{FedState, Federation};
use crate::store::FederationStatus;

/// How long after a pass's deadline an exchange waits for the round to be committed
/// (closing and committing take a moment; a failing store is retried meanwhile).
pub const CLOSE_GRACE: Duration = Duration::from_secs(60);

/// What an `EmbeddingHeader` claims, before its data arrives.
#[derive(Clone, Debug)]
pub struct EmbeddingClaim {
    /// The authenticated party.
    pub client_id: String,
    /// The EmbedTask's round (asynchronous training: the party's step number).
    pub round: u64,
    /// Rows that follow (the task's sample ids, in order).
    pub rows: u32,
    /// Outputs per row.
    pub output_dim: u32,
    /// `4 x rows x output_dim`.
    pub total_bytes: u64,
    /// Lower-case hex SHA-256 of the embedding bytes.
    pub sha256: String,
}

/// How an admitted exchange proceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The pass is open: receive `expected_bytes` before `deadline`, make them durable,
    /// then wait for the round to close.
    Open {
        /// Bytes the tensor must have.
        expected_bytes: usize,
        /// When the pass closes without this party.
        deadline: Instant,
    },
    /// The round is committed (or closing): receive and verify the bytes, then answer
    /// with what the round stored; nothing is recomputed.
    Replay {
        /// Bytes the tensor must have.
        expected_bytes: usize,
    },
}

impl Federation {
    /// Checks an embedding header against the federation BEFORE its data is received.
    ///
    /// INVALID_ARGUMENT for a wrong `output_dim`, `total_bytes`, `rows` or checksum
    /// format, or a round that is neither open nor committed; FAILED_PRECONDITION for a
    /// horizontal or stopped federation.
    pub async fn admit_embeddings(&self, claim: &EmbeddingClaim) -> ServiceResult<Admission> {
        let spec = self.vertical().ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "federation `{}` is horizontal: clients send model updates with UploadUpdate",
                self.id()
            ))
        })?;
        let c = spec.output_dim;
        if claim.output_dim as usize != c {
            return Err(ServiceError::InvalidArgument(format!(
                "output_dim is {} but the federation's embeddings have {c} outputs",
                claim.output_dim
            )));
        }
        let expected = (claim.rows as usize)
            .checked_mul(c)
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(|| {
                ServiceError::InvalidArgument(format!("{} rows are too many", claim.rows))
            })?;
        if claim.total_bytes != expected as u64 {
            return Err(ServiceError::InvalidArgument(format!(
                "total_bytes is {} but {} rows x {c} outputs x 4 bytes = {expected}",
                claim.total_bytes, claim.rows
            )));
        }
        if claim.sha256.len() != 64 || !claim.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ServiceError::InvalidArgument(format!(
                "sha256 must be 64 hex characters, got {:?}",
                claim.sha256
            )));
        }
        let st = self.state.lock().await;
        if st.record.status == FederationStatus::Stopped {
            return Err(ServiceError::FailedPrecondition(format!(
                "federation `{}` is stopped and takes no more embeddings",
                self.id()
            )));
        }
        let rounds = self.config().rounds;
        let evaluation = spec.evaluation_round(rounds);
        let (rows, admission) = match &st.vertical.open {
            _ if spec.asynchronous
                && claim.round != evaluation
                && st
                    .vertical
                    .open
                    .as_ref()
                    .is_none_or(|p| p.round != claim.round) =>
            {
                let (_, status) = check_step(&st, rounds, &claim.client_id, claim.round)?;
                (
                    spec.batch_len(),
                    match status {
                        StepStatus::Next => Admission::Open {
                            expected_bytes: expected,
                            deadline: Instant::now()
                                + Duration::from_millis(self.config().round_timeout_ms),
                        },
                        StepStatus::Committed => Admission::Replay {
                            expected_bytes: expected,
                        },
                    },
                )
            }
            Some(p) if p.round == claim.round => (
                p.ids.len(),
                if p.closed {
                    Admission::Replay {
                        expected_bytes: expected,
                    }
                } else {
                    Admission::Open {
                        expected_bytes: expected,
                        deadline: p.deadline,
                    }
                },
            ),
            open => {
                let replay = Admission::Replay {
                    expected_bytes: expected,
                };
                if !spec.asynchronous
                    && claim.round >= 1
                    && claim.round <= st.record.committed_rounds
                {
                    (spec.batch_len(), replay)
                } else if claim.round == evaluation && st.vertical.evaluated.is_some() {
                    (spec.test_ids.len(), replay)
                } else {
                    return Err(ServiceError::InvalidArgument(format!(
                        "round {} is neither open nor committed; {}",
                        claim.round,
                        match open {
                            Some(p) => format!("the open round is {}", p.round),
                            None => format!(
                                "no round is open ({} committed); pull a task first",
                                st.record.committed_rounds
                            ),
                        }
                    )));
                }
            }
        };
        if claim.rows as usize != rows {
            return Err(ServiceError::InvalidArgument(format!(
                "rows is {} but round {} has {rows} sample ids; send one row per sample id of the EmbedTask, in order",
                claim.rows, claim.round
            )));
        }
        Ok(admission)
    }

    /// Makes a party's fully received, checked embeddings of the open pass `round`
    /// durable and records them; returns only once they are in the store. A party that
    /// already sent them (e.g. before a restart) is answered `Ok` without a second write.
    ///
    /// The work runs on its own task: if the caller hangs up, the embeddings are still
    /// either both stored and recorded, or neither.
    pub async fn accept_embeddings(
        self: &Arc<Self>,
        client_id: &str,
        round: u64,
        values: Vec<f32>,
    ) -> ServiceResult<()> {
        let this = self.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move {
            if this.is_async_step(round).await {
                this.take_step(&client_id, round, values).await
            } else {
                this.store_embeddings(&client_id, round, values).await
            }
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("embedding task failed: {e}")))?
    }

    /// Whether an exchange of `round` is an asynchronous training step (not the
    /// evaluation pass).
    async fn is_async_step(&self, round: u64) -> bool {
        let Some(spec) = self.vertical() else {
            return false;
        };
        if !spec.asynchronous || round == spec.evaluation_round(self.config().rounds) {
            return false;
        }
        let st = self.state.lock().await;
        st.vertical.open.as_ref().is_none_or(|p| p.round != round)
    }

    async fn store_embeddings(
        &self,
        client_id: &str,
        round: u64,
        values: Vec<f32>,
    ) -> ServiceResult<()> {
        let mut st = self.state.lock().await;
        match st.vertical.open.as_ref() {
            Some(p) if p.round == round && p.received.contains_key(client_id) => return Ok(()),
            Some(p) if p.round == round && !p.closed => {}
            _ => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "round {round} closed before the embeddings of {client_id} arrived (its deadline passed); they do not count, pull the next task"
                )));
            }
        }
        let values = Arc::new(values);
        let store = self.store().clone();
        let (id, client, v) = (self.id().to_string(), client_id.to_string(), values.clone());
        tokio::task::spawn_blocking(move || store.put_embeddings(&id, round, &client, &v))
            .await
            .map_err(|e| ServiceError::Internal(format!("storage task failed: {e}")))??;
        if let Some(p) = st.vertical.open.as_mut() {
            p.received.insert(client_id.to_string(), values);
        }
        drop(st);
        self.notify();
        tracing::debug!(federation = %self.id(), client_id, round, "embeddings accepted");
        Ok(())
    }

    /// The gradients `client_id` gets for `round`: waits until the round is committed
    /// (or the evaluation pass closed), at most until `wait_until`.
    ///
    /// FAILED_PRECONDITION if the party's embeddings did not count (it missed the
    /// deadline), if the federation stopped, or if the round is still not closed at
    /// `wait_until` (the embeddings stay stored: repeating the exchange gets the answer).
    pub async fn gradient_reply(
        &self,
        client_id: &str,
        round: u64,
        wait_until: Instant,
    ) -> ServiceResult<Arc<GradientReply>> {
        if self.is_async_step(round).await {
            return self.step_reply(client_id, round).await;
        }
        let evaluation = self
            .vertical()
            .map_or(u64::MAX, |v| v.evaluation_round(self.config().rounds));
        let mut changes = self.subscribe_changes();
        loop {
            let found = {
                let st = self.state.lock().await;
                if st.record.status == FederationStatus::Stopped {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "federation `{}` was stopped before round {round} closed",
                        self.id()
                    )));
                }
                lookup(&st, round, evaluation)
            };
            let reply = match found {
                Found::Reply(reply) => Some(reply),
                Found::Stored => Some(self.stored_reply(round)?),
                Found::NotYet => None,
            };
            if let Some(reply) = reply {
                if reply.stragglers.iter().any(|s| s == client_id) {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "round {round} closed without the embeddings of {client_id} (its deadline passed); they did not count, pull the next task"
                    )));
                }
                return Ok(reply);
            }
            if tokio::time::timeout_at(wait_until, changes.changed())
                .await
                .is_err()
            {
                return Err(ServiceError::FailedPrecondition(format!(
                    "round {round} has not closed yet; the embeddings are stored, repeat the exchange to get the gradients"
                )));
            }
        }
    }

    /// The answer of committed training round `round`, read from the store.
    fn stored_reply(&self, round: u64) -> ServiceResult<Arc<GradientReply>> {
        let missing = |what: &str| {
            ServiceError::Internal(format!(
                "federation `{}`: {what} of committed round {round} missing from the store",
                self.id()
            ))
        };
        let record = self
            .store()
            .get_round(self.id(), round)?
            .ok_or_else(|| missing("the record"))?;
        let gradients = self
            .store()
            .get_gradients(self.id(), round)?
            .ok_or_else(|| missing("the gradients"))?;
        let loss = record
            .metrics
            .iter()
            .find(|(name, _)| name == "loss")
            .map_or(f64::NAN, |(_, v)| *v);
        let output_dim = self.vertical().map_or(1, |v| v.output_dim);
        Ok(Arc::new(GradientReply::new(
            round,
            output_dim,
            loss,
            &gradients,
            record.stragglers,
        )))
    }
}

/// Where the answer for `round` is.
enum Found {
    /// In memory.
    Reply(Arc<GradientReply>),
    /// Committed before the last round: in the store.
    Stored,
    /// Not closed yet.
    NotYet,
}

fn lookup(st: &FedState, round: u64, evaluation: u64) -> Found {
    let v = &st.vertical;
    if let Some(last) = v.last.as_ref().filter(|r| r.round == round) {
        return Found::Reply(last.clone());
    }
    if round == evaluation {
        return match &v.evaluated {
            Some(reply) => Found::Reply(reply.clone()),
            None => Found::NotYet,
        };
    }
    if round <= st.record.committed_rounds && open_round(v.open.as_ref()) != Some(round) {
        return Found::Stored;
    }
    Found::NotYet
}

fn open_round(pass: Option<&OpenPass>) -> Option<u64> {
    pass.map(|p| p.round)
}
