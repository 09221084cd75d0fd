//! Asynchronous vertical training (`training = "async"`, ALGORITHMS.md section 3): every
//! party steps at its own pace against the latest embeddings of the others.
//!
//! Party `m`'s step `k` embeds a batch drawn from the training ids by
//! [`draw_step_batch`]`(seed, m, k)`. `ExchangeEmbeddings` answers at once: the server
//! writes the party's rows into the latest-embedding table (one `N x C` block per party,
//! zeros for samples a party never sent), combines `z = sum_m h^m + b` over the batch from
//! the table, computes the loss and the per-sample gradients, moves the bias, and answers
//! ([`step_batch`], the semantics of the reference loop `train_async`).
//!
//! **Durability.** A step is answered only once it is durable: each step is appended to
//! the store's step log (the rows sent, the gradients answered, the bias after), and
//! every `snapshot_every`-th step over all parties also commits, in the same batch, the
//! whole table as snapshot round `r` (its round record, the bias as model version `r`,
//! the federation's progress). After `rounds` snapshots training is over: the driver
//! runs the evaluation pass and values the snapshots. A restart rebuilds the table from
//! the last snapshot plus the later log entries (`AsyncState::rebuild`); an exchange
//! repeating a committed step is answered from the log, never recomputed.
//!
//! Steps are taken by the exchange handlers under the federation's state lock (they
//! serialise), not by the driver; the driver only starts the run once every party
//! enrolled, then waits for the last snapshot.

use std::sync::Arc;

use fedval_core::vertical::{Objective, VerticalError};

#[cfg(doc)]
use super::round::draw_step_batch;
use super::round::{ClosedBatch, close_batch};
use super::{GradientReply, VerticalSpec};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{Event, FedState, Federation};
use crate::store::{
    FederationStatus, RoundRecord, StoreError, VerticalSnapshot, VerticalStepRecord,
};

/// The asynchronous run's in-memory state (inside the federation's state lock).
#[derive(Debug)]
pub(crate) struct AsyncState {
    /// Per party (enrollment order), the latest embedding of every sample, `N x C`
    /// row-major; zeros where the party never sent one.
    pub table: Vec<Vec<f32>>,
    /// Committed steps per party (the last step number).
    pub steps: Vec<u64>,
    /// Committed steps over all parties (the log's length).
    pub total: u64,
    /// Steps per party since the last snapshot.
    pub since_snapshot: Vec<u64>,
    /// Sum of the batch losses since the last snapshot.
    pub loss_since_snapshot: f64,
    /// Each party's last answer.
    pub last: Vec<Option<Arc<GradientReply>>>,
}

impl AsyncState {
    /// A run before its first step: `parties` empty tables of `N x C` zeros.
    fn fresh(parties: usize, values: usize) -> Self {
        Self {
            table: vec![vec![0.0; values]; parties],
            steps: vec![0; parties],
            total: 0,
            since_snapshot: vec![0; parties],
            loss_since_snapshot: 0.0,
            last: vec![None; parties],
        }
    }

    /// Rebuilds the state of a run with `committed` snapshots from `snapshot` (the table
    /// of snapshot `committed`, `None` when nothing was committed) and the whole step log;
    /// returns it with the bias after the last logged step (`None` if the log is empty).
    ///
    /// Fails (the store is corrupt) on a gap in the log, a step of an unknown party, a
    /// step number out of sequence, or a snapshot or rows of the wrong size.
    pub fn rebuild(
        spec: &VerticalSpec,
        seed: u64,
        parties: &[String],
        snapshot_every: u64,
        committed: u64,
        snapshot: Option<Vec<f32>>,
        log: &[(u64, VerticalStepRecord)],
    ) -> Result<(Self, Option<Vec<f32>>), String> {
        let (n, c) = (spec.objective.num_samples(), spec.output_dim);
        let values = n.saturating_mul(c);
        let mut state = Self::fresh(parties.len(), values);
        if let Some(table) = snapshot {
            if table.len() != values.saturating_mul(parties.len()) {
                return Err(format!(
                    "snapshot {committed} holds {} values, expected {} parties x {n} samples x {c} outputs",
                    table.len(),
                    parties.len()
                ));
            }
            for (block, values) in state.table.iter_mut().zip(table.chunks(values.max(1))) {
                block.copy_from_slice(values);
            }
        } else if committed > 0 {
            return Err(format!("snapshot {committed} is missing"));
        }
        let snapshot_steps = committed.saturating_mul(snapshot_every);
        let mut bias = None;
        for (seq, rec) in log {
            if *seq != state.total + 1 {
                return Err(format!(
                    "step log entry {seq} follows entry {}",
                    state.total
                ));
            }
            let m = parties
                .iter()
                .position(|p| *p == rec.client_id)
                .ok_or_else(|| format!("step {seq} is of unknown party {}", rec.client_id))?;
            let (steps, last) = match (state.steps.get_mut(m), state.last.get_mut(m)) {
                (Some(s), Some(l)) => (s, l),
                _ => return Err(format!("party index {m} out of range")),
            };
            if rec.step != *steps + 1 {
                return Err(format!(
                    "step {seq} is step {} of {} but its previous step is {steps}",
                    rec.step, rec.client_id
                ));
            }
            *steps = rec.step;
            *last = Some(Arc::new(reply_of(rec, c)));
            state.total = *seq;
            if *seq > snapshot_steps {
                let ids = spec.step_batch(seed, m, rec.step);
                write_rows(&mut state.table, m, &ids, &rec.rows_f32(), c)
                    .map_err(|e| format!("step {seq}: {e}"))?;
                if let Some(s) = state.since_snapshot.get_mut(m) {
                    *s += 1;
                }
                state.loss_since_snapshot += rec.loss;
            }
            bias = Some(rec.bias_f32());
        }
        if state.total < snapshot_steps {
            return Err(format!(
                "the step log holds {} steps but {committed} snapshots of {snapshot_every} steps were committed",
                state.total
            ));
        }
        Ok((state, bias))
    }
}

/// The answer recorded with a logged step.
fn reply_of(rec: &VerticalStepRecord, output_dim: usize) -> GradientReply {
    GradientReply::new(
        rec.step,
        output_dim,
        rec.loss,
        &rec.gradients_f32(),
        Vec::new(),
    )
}

/// Writes `rows` (`ids x C`, row-major) into party `party`'s block of `table`.
fn write_rows(
    table: &mut [Vec<f32>],
    party: usize,
    ids: &[u32],
    rows: &[f32],
    c: usize,
) -> Result<(), VerticalError> {
    let mismatch = || VerticalError::ShapeMismatch {
        what: "party embedding",
        rows: rows.len() / c.max(1),
        cols: c,
        expected_rows: ids.len(),
        expected_cols: c,
    };
    if rows.len() != ids.len().saturating_mul(c) {
        return Err(mismatch());
    }
    let block = table.get_mut(party).ok_or_else(mismatch)?;
    for (&i, row) in ids.iter().zip(rows.chunks(c.max(1))) {
        let start = (i as usize).saturating_mul(c);
        block
            .get_mut(start..start.saturating_add(c))
            .ok_or_else(mismatch)?
            .copy_from_slice(row);
    }
    Ok(())
}

/// Party `party`'s rows of `ids` in `table` (`ids x C`, row-major).
fn read_rows(table: &[Vec<f32>], party: usize, ids: &[u32], c: usize) -> Option<Vec<f32>> {
    let block = table.get(party)?;
    let mut out = Vec::with_capacity(ids.len().saturating_mul(c));
    for &i in ids {
        let start = (i as usize).saturating_mul(c);
        out.extend_from_slice(block.get(start..start.saturating_add(c))?);
    }
    Some(out)
}

/// One asynchronous step (pure): party `party` sends `rows` for the batch `ids`; the
/// other parties contribute their latest rows in `table` (zeros if never sent). Returns
/// the loss, the gradients and the new bias; `table` is NOT changed (the caller writes
/// the rows once the step is durable).
#[allow(clippy::too_many_arguments)]
pub fn step_batch(
    objective: &Objective,
    table: &[Vec<f32>],
    party: usize,
    ids: &[u32],
    rows: &[f32],
    bias: &[f32],
    learning_rate: f32,
    step: u64,
) -> Result<ClosedBatch, VerticalError> {
    let c = bias.len();
    let blocks: Vec<Vec<f32>> = (0..table.len())
        .map(|m| {
            if m == party {
                Ok(rows.to_vec())
            } else {
                read_rows(table, m, ids, c).ok_or(VerticalError::ShapeMismatch {
                    what: "embedding table",
                    rows: table.get(m).map_or(0, |b| b.len() / c.max(1)),
                    cols: c,
                    expected_rows: objective.num_samples(),
                    expected_cols: c,
                })
            }
        })
        .collect::<Result<_, _>>()?;
    let views: Vec<Option<&[f32]>> = blocks.iter().map(|b| Some(b.as_slice())).collect();
    close_batch(objective, bias, ids, &views, learning_rate, step)
}

/// Where a party stands in the asynchronous run.
pub(crate) enum StepStatus {
    /// `step` is the party's next step.
    Next,
    /// `step` is committed: answer it from the log.
    Committed,
}

/// Checks that `client_id` may exchange step `step` now; FAILED_PRECONDITION when the
/// run has not started or training is over, INVALID_ARGUMENT for a step that is neither
/// committed nor the party's next one.
pub(crate) fn check_step(
    st: &FedState,
    rounds: u64,
    client_id: &str,
    step: u64,
) -> ServiceResult<(usize, StepStatus)> {
    let Some(run) = st.vertical.steps.as_ref() else {
        return Err(ServiceError::FailedPrecondition(
            "asynchronous training has not started (waiting for every party); pull a task first"
                .into(),
        ));
    };
    let m = party_index(st, client_id)?;
    let done = run.steps.get(m).copied().unwrap_or(0);
    if step >= 1 && step <= done {
        return Ok((m, StepStatus::Committed));
    }
    if step != done.saturating_add(1) {
        return Err(ServiceError::InvalidArgument(format!(
            "step {step} is not the next step of {client_id} ({} steps committed); pull a task first",
            done
        )));
    }
    if st.record.committed_rounds >= rounds || st.record.status != FederationStatus::Running {
        return Err(ServiceError::FailedPrecondition(format!(
            "training is over; step {step} of {client_id} does not count, pull the next task"
        )));
    }
    Ok((m, StepStatus::Next))
}

/// The enrollment index of `client_id`.
pub(crate) fn party_index(st: &FedState, client_id: &str) -> ServiceResult<usize> {
    st.clients
        .iter()
        .position(|c| c.client_id == client_id)
        .ok_or_else(|| {
            ServiceError::InvalidArgument(format!("{client_id} is not a party of this federation"))
        })
}

impl Federation {
    /// Starts (or, after a restart, rebuilds) the asynchronous run once every party
    /// enrolled: called by the driver under the state lock.
    pub(crate) fn start_async(&self, st: &mut FedState) -> ServiceResult<()> {
        let Some(spec) = self.vertical() else {
            return Ok(());
        };
        let config = self.config();
        let parties: Vec<String> = st.clients.iter().map(|c| c.client_id.clone()).collect();
        let committed = st.record.committed_rounds;
        let snapshot = if committed > 0 {
            self.store().get_vertical_snapshot(self.id(), committed)?
        } else {
            None
        };
        let log = self.store().list_vertical_steps(self.id())?;
        let (state, bias) = AsyncState::rebuild(
            spec,
            config.seed,
            &parties,
            spec.snapshot_every,
            committed,
            snapshot,
            &log,
        )
        .map_err(|e| {
            ServiceError::Internal(format!(
                "federation `{}`: rebuilding the asynchronous run: {e}",
                self.id()
            ))
        })?;
        if let Some(bias) = bias {
            st.model = Arc::new(crate::federation::GlobalModel::new(committed, bias));
        }
        if st.record.status == FederationStatus::Waiting {
            let mut rec = st.record.clone();
            rec.status = FederationStatus::Running;
            self.store().put_federation(&rec)?;
            st.record = rec;
        }
        tracing::info!(federation = %self.id(), steps = state.total, snapshots = committed, rounds = config.rounds, "asynchronous vertical run started");
        st.vertical.steps = Some(state);
        Ok(())
    }

    /// Takes party `client_id`'s step `step` with its checked `rows` (module docs):
    /// durable on return. A step already committed (a repeated exchange) is a no-op.
    pub(crate) async fn take_step(
        &self,
        client_id: &str,
        step: u64,
        rows: Vec<f32>,
    ) -> ServiceResult<()> {
        let Some(spec) = self.vertical().cloned() else {
            return Ok(());
        };
        let config = self.config();
        let mut st = self.state.lock().await;
        let (m, status) = check_step(&st, config.rounds, client_id, step)?;
        if let StepStatus::Committed = status {
            return Ok(());
        }
        let ids = spec.step_batch(config.seed, m, step);
        let bias = st.model.params.clone();
        let clients: Vec<String> = st.clients.iter().map(|c| c.client_id.clone()).collect();
        let Some(run) = st.vertical.steps.as_mut() else {
            return Ok(());
        };
        let closed = step_batch(
            &spec.objective,
            &run.table,
            m,
            &ids,
            &rows,
            &bias,
            spec.learning_rate,
            step,
        )
        .map_err(|e| ServiceError::InvalidArgument(format!("step {step} of {client_id}: {e}")))?;
        let c = spec.output_dim;
        let gradients: Vec<f32> = closed.gradients.iter().copied().collect();
        let seq = run.total + 1;
        let record = VerticalStepRecord::new(
            client_id,
            step,
            closed.loss,
            &rows,
            &gradients,
            &closed.bias,
        );
        let snapshot_round = (seq % spec.snapshot_every == 0).then(|| seq / spec.snapshot_every);
        // The rows go into the table now; they are taken out again if the commit fails.
        let old = read_rows(&run.table, m, &ids, c).unwrap_or_default();
        write_rows(&mut run.table, m, &ids, &rows, c)
            .map_err(|e| ServiceError::InvalidArgument(format!("step {step}: {e}")))?;
        if let Some(s) = run.since_snapshot.get_mut(m) {
            *s += 1;
        }
        run.loss_since_snapshot += closed.loss;
        let round_record = snapshot_round.map(|r| {
            let mut participants = Vec::new();
            let mut stragglers = Vec::new();
            let mut metrics = vec![(
                "loss".to_string(),
                run.loss_since_snapshot / spec.snapshot_every as f64,
            )];
            for (client, n) in clients.iter().zip(&run.since_snapshot) {
                metrics.push((format!("steps/{client}"), *n as f64));
                if *n > 0 {
                    participants.push(client.clone());
                } else {
                    stragglers.push(client.clone());
                }
            }
            let valued = spec.valued(config);
            RoundRecord::committed(r, r, participants, stragglers, metrics, valued)
        });
        let mut fed_rec = st.record.clone();
        if let Some(r) = snapshot_round {
            fed_rec.committed_rounds = r;
            fed_rec.model_version = r;
        }
        let table: Vec<f32> = match (&round_record, st.vertical.steps.as_ref()) {
            (Some(_), Some(run)) => run.table.concat(),
            _ => Vec::new(),
        };
        let store = self.store().clone();
        let id = self.id().to_string();
        let (rec2, round2, bias2, fed2) = (
            record.clone(),
            round_record.clone(),
            closed.bias.clone(),
            fed_rec.clone(),
        );
        let committed = tokio::task::spawn_blocking(move || {
            let snapshot = round2.as_ref().map(|round| VerticalSnapshot {
                round,
                bias: &bias2,
                table: &table,
                fed: &fed2,
            });
            store.commit_vertical_step(&id, seq, &rec2, snapshot)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("step commit task failed: {e}")))?;
        let Some(run) = st.vertical.steps.as_mut() else {
            return Ok(());
        };
        if let Err(e) = committed {
            // Undo the in-memory change; a commit that reached the disk although it
            // reported failure is adopted by the next restart's rebuild.
            let _ = write_rows(&mut run.table, m, &ids, &old, c);
            if let Some(s) = run.since_snapshot.get_mut(m) {
                *s = s.saturating_sub(1);
            }
            run.loss_since_snapshot -= closed.loss;
            return Err(match e {
                StoreError::Conflict { key } => ServiceError::Internal(format!(
                    "step {seq} is already in the store (`{key}`); the server must restart to adopt it"
                )),
                e => e.into(),
            });
        }
        run.total = seq;
        if let Some(s) = run.steps.get_mut(m) {
            *s = step;
        }
        if let Some(l) = run.last.get_mut(m) {
            *l = Some(Arc::new(reply_of(&record, c)));
        }
        if snapshot_round.is_some() {
            run.since_snapshot.iter_mut().for_each(|s| *s = 0);
            run.loss_since_snapshot = 0.0;
        }
        st.model = Arc::new(crate::federation::GlobalModel::new(
            fed_rec.model_version,
            closed.bias,
        ));
        st.record = fed_rec;
        if let Some(round) = round_record {
            if spec.valued(config) {
                st.pending_valuation.insert(round.round, None);
            }
            drop(st);
            tracing::info!(federation = %self.id(), round = round.round, steps = seq, "asynchronous snapshot committed");
            self.emit(Event::RoundCommitted(Box::new(round)));
            self.notify();
        }
        Ok(())
    }

    /// The answer to `client_id`'s committed step `step`: its last one from memory, an
    /// older one from the step log.
    pub(crate) async fn step_reply(
        &self,
        client_id: &str,
        step: u64,
    ) -> ServiceResult<Arc<GradientReply>> {
        let c = self.vertical().map_or(1, |v| v.output_dim);
        {
            let st = self.state.lock().await;
            let (m, status) = match check_step(&st, self.config().rounds, client_id, step) {
                Ok(found) => found,
                Err(ServiceError::FailedPrecondition(_)) if st.vertical.steps.is_some() => {
                    (party_index(&st, client_id)?, StepStatus::Next)
                }
                Err(e) => return Err(e),
            };
            if let StepStatus::Next = status {
                return Err(ServiceError::FailedPrecondition(format!(
                    "step {step} of {client_id} was not committed; pull the next task"
                )));
            }
            let last = st
                .vertical
                .steps
                .as_ref()
                .and_then(|run| run.last.get(m))
                .and_then(|l| l.clone())
                .filter(|l| l.round == step);
            if let Some(reply) = last {
                return Ok(reply);
            }
        }
        self.store()
            .list_vertical_steps(self.id())?
            .into_iter()
            .find(|(_, r)| r.client_id == client_id && r.step == step)
            .map(|(_, r)| Arc::new(reply_of(&r, c)))
            .ok_or_else(|| {
                ServiceError::Internal(format!(
                    "federation `{}`: committed step {step} of {client_id} missing from the step log",
                    self.id()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Two parties, regression, one output: every number below is computed by hand.
    #[test]
    fn a_step_combines_the_latest_rows_of_the_others_and_zeros() {
        let objective = Objective::new_regression(vec![1.0, 2.0, -1.0, 0.5]).expect("valid");
        // Party 1 has sent samples 0 and 2 (0.5 and -1.0); sample 3 never (zero).
        let table = vec![vec![0.0; 4], vec![0.5, 9.0, -1.0, 0.0]];
        let ids = [0u32, 2, 3];
        let rows = [0.25f32, 1.0, 1.5];
        let closed = step_batch(&objective, &table, 0, &ids, &rows, &[0.5], 0.5, 1).expect("steps");
        // z = rows + party 1 + 0.5 = [1.25, 0.5, 2.0]; y = [1, -1, 0.5]; g = z - y.
        assert_eq!(closed.gradients, array![[0.25f32], [1.5], [1.5]]);
        // loss = mean(0.5 g^2) = (0.03125 + 1.125 + 1.125) / 3.
        assert!(
            (closed.loss - 2.28125 / 3.0).abs() < 1e-9,
            "{}",
            closed.loss
        );
        // bias = 0.5 - 0.5 * mean(g) = 0.5 - 0.5 * (3.25 / 3).
        assert!((closed.bias[0] - (0.5 - 3.25 / 6.0)).abs() < 1e-6);
        // Party 0's own old rows do not count: its new rows replace them.
        let mut stale = table.clone();
        stale[0] = vec![100.0; 4];
        assert_eq!(
            step_batch(&objective, &stale, 0, &ids, &rows, &[0.5], 0.5, 1).expect("steps"),
            closed
        );
    }

    #[test]
    fn rows_are_written_and_read_by_sample_id() {
        let mut table = vec![vec![0.0f32; 6]; 2];
        write_rows(&mut table, 1, &[2, 0], &[1.0, 2.0, 3.0, 4.0], 2).expect("fits");
        assert_eq!(table[1], vec![3.0, 4.0, 0.0, 0.0, 1.0, 2.0]);
        assert_eq!(
            read_rows(&table, 1, &[0, 2], 2),
            Some(vec![3.0, 4.0, 1.0, 2.0])
        );
        assert!(write_rows(&mut table, 1, &[3], &[1.0, 2.0], 2).is_err());
        assert!(write_rows(&mut table, 2, &[0], &[1.0, 2.0], 2).is_err());
        assert!(write_rows(&mut table, 0, &[0], &[1.0], 2).is_err());
        assert_eq!(read_rows(&table, 0, &[3], 2), None);
    }
}
