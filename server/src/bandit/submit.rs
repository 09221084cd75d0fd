//! `SubmitBandit`: a client's answer to a bandit task, checked, made durable, recorded in
//! the run, and the driver woken (module docs of [`crate::bandit`]).
//!
//! The checks without the state come first ([`Submission::from_proto`], shapes and
//! values); the rest runs on its own task under the state lock, so a client that hangs up
//! cannot leave a durable answer the run does not know about. Every answer is acknowledged
//! only once it is in the store; an identical repeat of a durable answer is acknowledged
//! again, a different one is refused.

use std::sync::Arc;

use fedval_core::incentive::truthfedban::SelectionProblem;
use fedval_proto::v1 as pb;

use super::{
    Aggregate, BanditSettings, CommRound, MAX_REPORTED_COST, MAX_STATISTIC_ABS, Phase, Run,
    active_id,
};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{FedState, Federation};
use crate::store::{BanditReport, BanditStepRecord, FederationStatus, StoreError};

/// Relative tolerance of the symmetry and positive-semidefiniteness checks of a Gram
/// update.
const GRAM_TOLERANCE: f64 = 1e-9;

/// A bandit client's answer, checked for shape and values.
#[derive(Clone, Debug, PartialEq)]
pub enum Submission {
    /// The played step.
    Step {
        step: u64,
        reward: f64,
        trigger_statistic: f64,
        triggered: bool,
    },
    /// A cost report of a communication round.
    Report { round: u64, report: BanditReport },
    /// A selected client's reward vector.
    Upload { round: u64, b: Vec<f64> },
    /// The acknowledgement of a downloaded aggregate.
    Synced { round: u64 },
}

fn invalid(message: String) -> ServiceError {
    ServiceError::InvalidArgument(message)
}

/// Checks that `values` has `expected` finite entries of magnitude at most
/// [`MAX_STATISTIC_ABS`]; `what` names the field in the error.
fn check_values(what: &str, values: &[f64], expected: usize) -> ServiceResult<()> {
    if values.len() != expected {
        return Err(invalid(format!(
            "{what} has {} values, expected {expected}",
            values.len()
        )));
    }
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && v.abs() <= MAX_STATISTIC_ABS))
    {
        return Err(invalid(format!(
            "{what}[{i}] = {v} must be finite and at most {MAX_STATISTIC_ABS:e} in magnitude"
        )));
    }
    Ok(())
}

/// Checks a Gram update of dimension `d`: `d x d` finite values, symmetric to
/// [`GRAM_TOLERANCE`] relative, and positive semidefinite (a sum of `x x^T`), which keeps
/// `g(S)` defined for every set of clients.
fn check_gram(round: u64, gram: &[f64], d: usize) -> ServiceResult<()> {
    let what = format!("gram_update of round {round}");
    check_values(&what, gram, d * d)?;
    let scale = gram.iter().fold(1.0_f64, |m, v| m.max(v.abs()));
    for i in 0..d {
        for j in (i + 1)..d {
            let (a, b) = (gram[i * d + j], gram[j * d + i]);
            if (a - b).abs() > GRAM_TOLERANCE * scale {
                return Err(invalid(format!(
                    "{what} is not symmetric: entry ({i}, {j}) = {a} but ({j}, {i}) = {b}; send the row-major sum of x x^T of your pending observations"
                )));
            }
        }
    }
    if SelectionProblem::new(d, GRAM_TOLERANCE * scale, gram, Vec::new()).is_err() {
        return Err(invalid(format!(
            "{what} is not positive semidefinite; send the sum of x x^T of your pending observations"
        )));
    }
    Ok(())
}

impl Submission {
    /// Converts and checks a wire submission for a federation of `settings` (everything
    /// that does not need the run's state): finite reward and statistic consistent with the
    /// threshold, a finite cost in `[0, MAX_REPORTED_COST]`, shapes, finiteness, symmetry and
    /// semidefiniteness of a Gram update, the length of a reward vector.
    pub fn from_proto(
        kind: Option<pb::bandit_submission::Kind>,
        settings: &BanditSettings,
    ) -> ServiceResult<Self> {
        use pb::bandit_submission::Kind;
        let d = settings.dim as usize;
        match kind {
            None => Err(invalid(
                "the submission names no kind: send a step, report, upload or synced".into(),
            )),
            Some(Kind::Step(s)) => {
                if !s.reward.is_finite() || !s.trigger_statistic.is_finite() {
                    return Err(invalid(format!(
                        "step {}: reward {} and trigger_statistic {} must be finite",
                        s.step, s.reward, s.trigger_statistic
                    )));
                }
                if s.triggered != (s.trigger_statistic > settings.threshold) {
                    return Err(invalid(format!(
                        "step {}: triggered = {} but the statistic {} {} the threshold {}; triggered must be statistic > threshold",
                        s.step,
                        s.triggered,
                        s.trigger_statistic,
                        if s.trigger_statistic > settings.threshold {
                            "exceeds"
                        } else {
                            "does not exceed"
                        },
                        settings.threshold
                    )));
                }
                Ok(Submission::Step {
                    step: s.step,
                    reward: s.reward,
                    trigger_statistic: s.trigger_statistic,
                    triggered: s.triggered,
                })
            }
            Some(Kind::Report(r)) => {
                if !(r.cost.is_finite() && (0.0..=MAX_REPORTED_COST).contains(&r.cost)) {
                    return Err(invalid(format!(
                        "round {}: cost {} must be finite, >= 0 and at most {MAX_REPORTED_COST:e}",
                        r.round, r.cost
                    )));
                }
                check_gram(r.round, &r.gram_update, d)?;
                Ok(Submission::Report {
                    round: r.round,
                    report: BanditReport {
                        cost: r.cost,
                        gram_update: r.gram_update,
                    },
                })
            }
            Some(Kind::Upload(u)) => {
                check_values(&format!("b_update of round {}", u.round), &u.b_update, d)?;
                Ok(Submission::Upload {
                    round: u.round,
                    b: u.b_update,
                })
            }
            Some(Kind::Synced(s)) => Ok(Submission::Synced { round: s.round }),
        }
    }
}

/// The started run, or why a submission cannot be taken now.
fn running<'a>(fed: &Federation, st: &'a mut FedState) -> ServiceResult<&'a mut Run> {
    if matches!(
        st.record.status,
        FederationStatus::Finished | FederationStatus::Stopped
    ) {
        return Err(ServiceError::FailedPrecondition(format!(
            "federation `{}` is {}; it takes no more submissions",
            fed.id(),
            st.record.status.as_str()
        )));
    }
    st.bandit.run.as_mut().ok_or_else(|| {
        ServiceError::FailedPrecondition(format!(
            "the bandit run of `{}` has not started (waiting for every client to enroll); pull a task first",
            fed.id()
        ))
    })
}

/// Runs a blocking store write off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ServiceResult<T> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("storage task failed: {e}")))??)
}

/// What became of a write-once record ([`put_once`]).
enum Written<T> {
    /// It is durable: written now, or an identical one was already stored.
    Durable,
    /// A different one was already stored (a write that reported failure although it
    /// reached the disk): the stored one, which the run must follow.
    Other(T),
}

/// Writes the write-once record `value` with `put` off the async runtime; on a store
/// [`StoreError::Conflict`] reads back what is stored with `get` and says whether it is
/// `value`. `what` names the record in the error of a conflict with nothing readable.
async fn put_once<T: PartialEq>(
    put: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
    get: impl FnOnce() -> Result<Option<T>, StoreError>,
    value: &T,
    what: &str,
) -> ServiceResult<Written<T>> {
    match blocking(put).await {
        Ok(()) => Ok(Written::Durable),
        Err(ServiceError::Store(StoreError::Conflict { .. })) => match get()? {
            Some(stored) if stored == *value => Ok(Written::Durable),
            Some(stored) => Ok(Written::Other(stored)),
            None => Err(ServiceError::Internal(format!(
                "the store refused {what} as a duplicate but holds none"
            ))),
        },
        Err(e) => Err(e),
    }
}

/// The answer to a step submitted for step `t`, which the log already holds as `stored`.
fn step_taken(t: u64, stored: &BanditStepRecord, rec: &BanditStepRecord) -> ServiceError {
    if stored.client_id != rec.client_id {
        return ServiceError::FailedPrecondition(format!(
            "step {t} was played by {}, not {}",
            stored.client_id, rec.client_id
        ));
    }
    ServiceError::AlreadyExists(format!(
        "step {t} is already recorded with reward {}, statistic {} and triggered = {}; a step \
         is played once: pull the next task",
        stored.reward, stored.trigger_statistic, stored.triggered
    ))
}

impl Federation {
    /// Takes `client_id`'s checked `submission` (module docs): durable on return.
    ///
    /// The work runs on its own task: if the caller is cancelled, the answer is still
    /// either both stored and recorded in the run, or neither.
    pub async fn submit_bandit(
        self: &Arc<Self>,
        client_id: &str,
        submission: Submission,
    ) -> ServiceResult<()> {
        let this = self.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move { this.take_bandit(&client_id, submission).await })
            .await
            .map_err(|e| ServiceError::Internal(format!("submission task failed: {e}")))?
    }

    async fn take_bandit(&self, client_id: &str, submission: Submission) -> ServiceResult<()> {
        let Some(settings) = self.config().bandit else {
            return Err(ServiceError::FailedPrecondition(format!(
                "federation `{}` is not a bandit federation; SubmitBandit does not apply",
                self.id()
            )));
        };
        let changed = match submission {
            Submission::Step {
                step,
                reward,
                trigger_statistic,
                triggered,
            } => {
                let rec = BanditStepRecord {
                    client_id: client_id.to_string(),
                    step,
                    reward,
                    trigger_statistic,
                    triggered,
                    skipped: false,
                };
                self.take_played_step(&settings, rec).await?
            }
            Submission::Report { round, report } => {
                self.take_report(&settings, client_id, round, report)
                    .await?
            }
            Submission::Upload { round, b } => self.take_upload(client_id, round, b).await?,
            Submission::Synced { round } => self.take_synced(client_id, round).await?,
        };
        if changed {
            self.notify();
        }
        Ok(())
    }

    /// Appends a played step; `false` when it was a repeat of a durable one.
    async fn take_played_step(
        &self,
        settings: &BanditSettings,
        rec: BanditStepRecord,
    ) -> ServiceResult<bool> {
        let config = self.config();
        let mut st = self.state.lock().await;
        let active = active_id(config, settings, &st, rec.step).map(str::to_string);
        let run = running(self, &mut st)?;
        let t = rec.step;
        if t >= 1 && t <= run.step {
            let stored = match &run.last {
                Some(last) if last.step == t => Some(last.clone()),
                _ => self.store().get_bandit_step(self.id(), t)?,
            };
            return match stored {
                Some(s) if s.skipped => Err(super::skipped_error(t, config.round_timeout_ms)),
                Some(s) if s == rec => Ok(false),
                Some(s) => Err(step_taken(t, &s, &rec)),
                None => Err(ServiceError::Internal(format!(
                    "federation `{}`: durable step {t} missing from the step log",
                    self.id()
                ))),
            };
        }
        let next = run.step + 1;
        if t != next || !run.play_open(settings.horizon) {
            return Err(ServiceError::FailedPrecondition(format!(
                "step {t} is not open for play (the last recorded step is {}{}); pull a task first",
                run.step,
                if run.play_open(settings.horizon) {
                    format!(", step {next} is next")
                } else {
                    ", and a communication round or the end of the run comes first".into()
                }
            )));
        }
        if run.rounds > 0 && run.synced(&rec.client_id) < run.rounds {
            return Err(ServiceError::FailedPrecondition(format!(
                "{} must download the aggregate of round {} first; pull a task",
                rec.client_id, run.rounds
            )));
        }
        if active.as_deref() != Some(rec.client_id.as_str()) {
            return Err(ServiceError::FailedPrecondition(format!(
                "step {t} is {}'s turn, not {}'s",
                active.unwrap_or_default(),
                rec.client_id
            )));
        }
        let (store, id, rec2) = (self.store().clone(), self.id().to_string(), rec.clone());
        let written = put_once(
            move || store.put_bandit_step(&id, &rec2),
            || self.store().get_bandit_step(self.id(), t),
            &rec,
            "the step",
        )
        .await?;
        let run = running(self, &mut st)?;
        run.step = t;
        match written {
            Written::Durable => {
                run.last = Some(rec);
                Ok(true)
            }
            // Written (by an earlier attempt that reported failure) with other values: the
            // log is the truth, so the run follows it and this submission is refused.
            Written::Other(stored) => {
                let refused = if stored.skipped {
                    run.skipped += 1;
                    super::skipped_error(t, config.round_timeout_ms)
                } else {
                    step_taken(t, &stored, &rec)
                };
                run.last = Some(stored);
                drop(st);
                self.notify();
                Err(refused)
            }
        }
    }

    /// Records a cost report of the open round; `false` when it was a repeat.
    async fn take_report(
        &self,
        settings: &BanditSettings,
        client_id: &str,
        round: u64,
        report: BanditReport,
    ) -> ServiceResult<bool> {
        let mut st = self.state.lock().await;
        let clients = st.clients.len();
        let run = running(self, &mut st)?;
        let rounds = run.rounds;
        let synced = run.synced(client_id);
        let aggregate = run.aggregate.clone();
        let open = match &run.open {
            Some(r) if r.round == round => r,
            _ => {
                let stored = self
                    .store()
                    .get_bandit_report(self.id(), round, client_id)?;
                return closed_repeat(round, rounds, stored.as_ref() == Some(&report), "report");
            }
        };
        if let Some(first) = open.reports.get(client_id) {
            return repeat(round, **first == report, "report", client_id);
        }
        if open.phase != Phase::Report {
            return Err(ServiceError::FailedPrecondition(format!(
                "round {round} takes no more cost reports (its report phase closed); pull the next task"
            )));
        }
        if synced < rounds {
            return Err(ServiceError::FailedPrecondition(format!(
                "{client_id} must download the aggregate of round {rounds} before reporting"
            )));
        }
        check_definite(settings, &aggregate, round, &report.gram_update, clients)?;
        let (store, id, client, report) = (
            self.store().clone(),
            self.id().to_string(),
            client_id.to_string(),
            Arc::new(report),
        );
        let report2 = report.clone();
        let written = put_once(
            move || store.put_bandit_report(&id, round, &client, &report2),
            || self.store().get_bandit_report(self.id(), round, client_id),
            &*report,
            "the report",
        )
        .await?;
        // A different stored report (an earlier attempt that reported failure) is the one
        // the round uses, as it would after a restart.
        let (report, answer) = match written {
            Written::Durable => (report, Ok(true)),
            Written::Other(stored) => (Arc::new(stored), repeat(round, false, "report", client_id)),
        };
        if let Some(r) = open_round(&mut st, round) {
            r.reports.insert(client_id.to_string(), report);
        }
        drop(st);
        if answer.is_err() {
            self.notify();
        }
        answer
    }

    /// Records a selected client's upload; `false` when it was a repeat.
    async fn take_upload(&self, client_id: &str, round: u64, b: Vec<f64>) -> ServiceResult<bool> {
        let mut st = self.state.lock().await;
        let run = running(self, &mut st)?;
        let rounds = run.rounds;
        let open = match &run.open {
            Some(r) if r.round == round => r,
            _ => {
                let stored = self
                    .store()
                    .get_bandit_upload(self.id(), round, client_id)?;
                return closed_repeat(round, rounds, stored.as_ref() == Some(&b), "upload");
            }
        };
        if let Some(first) = open.uploads.get(client_id) {
            return repeat(round, **first == b, "upload", client_id);
        }
        match (open.phase, &open.settlement) {
            (Phase::Upload, Some(s)) if s.is_selected(client_id) => {}
            (Phase::Upload, _) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "{client_id} was not selected in round {round}; it uploads nothing"
                )));
            }
            (Phase::Report | Phase::Settling, _) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "round {round} has not selected its participants yet; pull a task first"
                )));
            }
            (Phase::Committing, _) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "round {round} is closing (its upload deadline passed); the upload was not accepted"
                )));
            }
        }
        let (store, id, client, b) = (
            self.store().clone(),
            self.id().to_string(),
            client_id.to_string(),
            Arc::new(b),
        );
        let b2 = b.clone();
        let written = put_once(
            move || store.put_bandit_upload(&id, round, &client, &b2),
            || self.store().get_bandit_upload(self.id(), round, client_id),
            &*b,
            "the upload",
        )
        .await?;
        // As for reports: a different stored upload is the one the round uses.
        let (b, answer) = match written {
            Written::Durable => (b, Ok(true)),
            Written::Other(stored) => (Arc::new(stored), repeat(round, false, "upload", client_id)),
        };
        if let Some(r) = open_round(&mut st, round) {
            r.uploads.insert(client_id.to_string(), b);
        }
        drop(st);
        if answer.is_err() {
            self.notify();
        }
        answer
    }

    /// Records that a client downloaded the aggregate of `round`; `false` when it had.
    async fn take_synced(&self, client_id: &str, round: u64) -> ServiceResult<bool> {
        let mut st = self.state.lock().await;
        let run = running(self, &mut st)?;
        if round == 0 || round > run.rounds {
            return Err(ServiceError::FailedPrecondition(format!(
                "round {round} has no aggregate to download ({} rounds are committed)",
                run.rounds
            )));
        }
        if run.synced(client_id) >= round {
            return Ok(false);
        }
        let (store, id, client) = (
            self.store().clone(),
            self.id().to_string(),
            client_id.to_string(),
        );
        blocking(move || store.put_bandit_synced(&id, &client, round)).await?;
        let run = running(self, &mut st)?;
        run.synced.insert(client_id.to_string(), round);
        Ok(true)
    }
}

/// The open round `round` of the run, if it still is.
fn open_round(st: &mut FedState, round: u64) -> Option<&mut CommRound> {
    st.bandit
        .run
        .as_mut()
        .and_then(|run| run.open.as_mut())
        .filter(|r| r.round == round)
}

/// The answer to a submission for a round that is not open: a durable identical repeat is
/// acknowledged, anything else refused.
fn closed_repeat(round: u64, committed: u64, identical: bool, what: &str) -> ServiceResult<bool> {
    if identical {
        return Ok(false);
    }
    Err(ServiceError::FailedPrecondition(if round <= committed {
        format!("round {round} is closed; this {what} was not accepted")
    } else {
        format!("round {round} is not open ({committed} rounds committed); pull a task first")
    }))
}

/// The answer to a second submission of the same kind in the open round.
fn repeat(round: u64, identical: bool, what: &str, client_id: &str) -> ServiceResult<bool> {
    if identical {
        Ok(false)
    } else {
        Err(ServiceError::AlreadyExists(format!(
            "a different {what} of {client_id} for round {round} was already accepted; a {what} is sent once"
        )))
    }
}

/// Checks that `lambda I + V_g + n dV` is positive definite, `n` the number of clients.
///
/// [`check_gram`] lets a Gram update be slightly indefinite (its tolerance is relative to
/// the update's largest entry), and the selection evaluates `g(S)` for sets of updates:
/// two updates each harmless alone could sum to an indefinite matrix, and the round's
/// selection would then fail on every retry, stalling the run. With this check every sum
/// over `S` is `(1 - |S|/n) (lambda I + V_g) + (1/n) sum_{j in S} (lambda I + V_g + n dV_j)`,
/// a combination of positive definite matrices, so `g(S)` is defined for every set of at
/// most `n` reporters (and `lambda I + V_g` stays positive definite after the round). A
/// positive semidefinite update (a sum of `x x^T`) always passes.
fn check_definite(
    settings: &BanditSettings,
    aggregate: &Aggregate,
    round: u64,
    gram: &[f64],
    clients: usize,
) -> ServiceResult<()> {
    let d = settings.dim as usize;
    let n = clients.max(1) as f64;
    let sum: Vec<f64> = aggregate
        .v_g
        .iter()
        .zip(gram)
        .map(|(a, b)| a + n * b)
        .collect();
    SelectionProblem::new(d, settings.lambda, &sum, Vec::new())
        .map(|_| ())
        .map_err(|e| {
            invalid(format!(
                "gram_update of round {round} is not positive semidefinite enough: lambda I + V_g + {clients} x dV ({clients} clients) must be positive definite ({e}); send the sum of x x^T of your pending observations"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BanditSettings {
        BanditSettings::new(2, 10)
    }

    fn report(round: u64, cost: f64, gram: Vec<f64>) -> Option<pb::bandit_submission::Kind> {
        Some(pb::bandit_submission::Kind::Report(pb::BanditCostReport {
            round,
            cost,
            gram_update: gram,
        }))
    }

    fn refused(kind: Option<pb::bandit_submission::Kind>) -> String {
        match Submission::from_proto(kind, &settings()) {
            Err(ServiceError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn malformed_submissions_are_refused_with_what_to_fix() {
        let ok = vec![2.0, 1.0, 1.0, 1.0];
        assert!(Submission::from_proto(report(1, 0.5, ok.clone()), &settings()).is_ok());
        assert!(refused(None).contains("names no kind"));
        assert!(refused(report(1, f64::NAN, ok.clone())).contains("cost NaN"));
        assert!(refused(report(1, -1.0, ok.clone())).contains(">= 0"));
        assert!(refused(report(1, 0.5, vec![1.0; 3])).contains("has 3 values, expected 4"));
        assert!(refused(report(1, 0.5, vec![1.0, f64::INFINITY, 1.0, 1.0])).contains("[1] = inf"));
        assert!(refused(report(1, 0.5, vec![1.0, 0.5, 0.25, 1.0])).contains("not symmetric"));
        assert!(
            refused(report(1, 0.5, vec![1.0, 2.0, 2.0, 1.0])).contains("not positive semidefinite")
        );
        let step = |reward: f64, stat: f64, triggered: bool| {
            Some(pb::bandit_submission::Kind::Step(pb::BanditStep {
                step: 3,
                reward,
                trigger_statistic: stat,
                triggered,
            }))
        };
        assert!(refused(step(f64::NAN, 1.0, false)).contains("must be finite"));
        // The default threshold is 20.
        assert!(refused(step(0.5, 25.0, false)).contains("exceeds the threshold 20"));
        assert!(refused(step(0.5, 5.0, true)).contains("does not exceed"));
        assert!(Submission::from_proto(step(0.5, 25.0, true), &settings()).is_ok());
        let upload = Some(pb::bandit_submission::Kind::Upload(pb::BanditUpload {
            round: 2,
            b_update: vec![1.0],
        }));
        assert!(refused(upload).contains("b_update of round 2 has 1 values, expected 2"));
    }

    #[test]
    fn an_indefinite_sum_with_the_aggregate_is_refused() {
        let mut s = settings();
        s.lambda = 1e-3;
        let aggregate = Aggregate::zeros(2);
        assert!(check_definite(&s, &aggregate, 1, &[1.0, 0.0, 0.0, 0.0], 3).is_ok());
        let err =
            check_definite(&s, &aggregate, 1, &[-1.0, 0.0, 0.0, 0.0], 3).expect_err("indefinite");
        assert!(
            err.to_string()
                .contains("lambda I + V_g + 3 x dV (3 clients) must be positive definite"),
            "{err}"
        );
    }

    /// `check_gram` tolerates an eigenvalue of -1e-9 x the largest entry: on a scale of 1e9
    /// an update with eigenvalue -0.6 along (1, -1) passes it, and `lambda I + dV` is still
    /// positive definite (lambda 1). Two such reports would make `g(both)` undefined and
    /// the round's selection fail on every retry (a stalled run). Whatever the report
    /// checks accept, the selection over the accepted reports must be defined.
    #[test]
    fn reports_whose_sum_could_be_indefinite_are_refused() {
        let mut s = settings();
        s.threshold = 1e-9;
        let aggregate = Aggregate::zeros(2);
        let selection_over_accepted = |negative: f64| {
            let half = 1e9;
            let gram = vec![
                half - negative / 2.0,
                half + negative / 2.0,
                half + negative / 2.0,
                half - negative / 2.0,
            ];
            let Ok(Submission::Report { report, .. }) =
                Submission::from_proto(report(1, 1.0, gram), &s)
            else {
                panic!("the shape and semidefiniteness checks accept it");
            };
            let accepted: Vec<(String, Arc<BanditReport>)> = ["a", "b"]
                .into_iter()
                .filter(|_| check_definite(&s, &aggregate, 1, &report.gram_update, 2).is_ok())
                .map(|c| (c.to_string(), Arc::new(report.clone())))
                .collect();
            let trigger = crate::bandit::round::Trigger {
                client_id: "a".into(),
                step: 1,
                t_last: 0,
                claimed: 1.0,
                downloaded: Some(Arc::new(aggregate.clone())),
            };
            let settled = crate::bandit::round::settle(&s, &aggregate, &accepted, &trigger);
            if !accepted.is_empty() {
                assert_eq!(settled.void_reason, None, "eigenvalue -{negative}");
            }
            accepted.len()
        };
        assert_eq!(selection_over_accepted(0.6), 0, "both refused");
        assert_eq!(
            selection_over_accepted(0.3),
            2,
            "harmless together: both accepted"
        );
        // A positive semidefinite update passes whatever the number of clients.
        assert!(check_definite(&s, &aggregate, 1, &[4.0, 2.0, 2.0, 1.0], 100).is_ok());
    }
}
