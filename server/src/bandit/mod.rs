//! Bandit federations (ALGORITHMS.md section 7): federated linear bandits with
//! Truth-FedBan incentives, over gRPC.
//!
//! **Protocol.** The run starts once `min_clients` clients enrolled (no enrollment
//! afterwards) and lasts steps `t = 1..=horizon`. The active client of step `t` is a
//! seeded uniform draw over the clients in enrollment order ([`active_client`], a pure
//! function of `(bandit.seed or the federation's seed, t)`); its `PullTask` answers
//! `BanditTask.play{t, t_last}`, everyone else waits. It plays LinUCB and answers
//! `SubmitBandit{step}`; the step is appended to the store's step log before it is
//! acknowledged (`submit`). A triggered step opens communication round `k`
//! (`k = 1, 2, ...`) in three phases, each closed when every client answered or after
//! `round_timeout_ms`:
//! 1. *report*: every client reports its cost and its pending Gram update `dV` (durable on
//!    acknowledgement). Clients that did not report are left out of the round.
//! 2. *upload*: [`round::settle`] verifies the trigger (below), selects the participants
//!    (greedy log-det gain per reported cost to `g(all reporters) + log(beta)`) and prices
//!    them (critical values, or the baseline); each selected client uploads its `db` (durable
//!    on acknowledgement). The
//!    round record, the new aggregate `(V_g, b_g)`, the payments and the federation's
//!    progress are then committed in ONE atomic batch ([`round::conclude`],
//!    `Store::commit_bandit_round`). A selected client whose upload missed the deadline
//!    is neither aggregated nor paid.
//! 3. *sync*: every client downloads `(V_g, b_g)` with `selected` (clear your pending
//!    statistics) and its payment, and acknowledges. A client that missed it is handed the
//!    sync of the latest round before anything else, with `selected` true if any round it
//!    missed aggregated its data. Then step `t + 1` follows.
//!
//! After step `horizon` (and its round, if it triggered one) the federation finishes.
//!
//! **Skipped steps.** A step is open for play from the moment the previous step (or its
//! round's sync phase) closed. If its active client has not submitted it within
//! `round_timeout_ms` (the deadline of the round phases), the driver *skips* it: it appends
//! a skipped record to the step log (`BanditStepRecord.skipped`, no reward, not triggered),
//! durable before anyone moves on, counts it, and step `t + 1` follows with its active
//! client drawn as usual ([`active_client`] of `(seed, t + 1)`). A skipped step never opens
//! a round. A late submission of a skipped step is refused with FAILED_PRECONDITION ("step
//! t was skipped after N ms without an answer; pull the next task"); the client's LinUCB
//! keeps the observation it made, as local data it reports and uploads in later rounds
//! like any other pending statistics. Each committed round records the run's skipped steps
//! so far (at or before its step) as its metric [`SKIPPED_STEPS_METRIC`]; steps skipped
//! after the last round appear in no round record (the step log holds them). A restart
//! keeps every skipped step skipped (the log is the truth), and the deadline of the step
//! open at the restart starts again from the restart.
//!
//! **Trigger verification.** A step's `triggered` must equal `trigger_statistic >
//! threshold` (checked on submission), but the statistic is the client's word, and a paid
//! round per step is worth claiming. So when the report phase closes the server recomputes
//! it: the trigger client played no step since its trigger, so its report's `dV` is the
//! pending update of that step, and it downloaded the aggregate of the last committed round
//! before playing (a step is refused until it has), so its LinUCB base is `lambda I + V_g`
//! of that aggregate. The statistic `(t - t_last) * (log det(lambda I + V_g + dV) - log
//! det(lambda I + V_g))` comes from core's `trigger_statistic`, bit for bit what an honest
//! `LinUcbClient` computed, and must exceed the threshold up to a relative
//! [`round::TRIGGER_TOLERANCE`]. The recomputed value is recorded
//! (`BanditRound.trigger_statistic`). This checks the claim against the reported `dV`; a
//! client that inflates its `dV` is not caught here (the mechanism takes reported Gram
//! updates as truthful; only costs are strategic).
//!
//! **Void rounds.** A round is *void* when its trigger does not verify, when the trigger
//! client did not report at all, or when the selection or pricing fails (say a Cholesky
//! factorisation that rounding made fail; retrying a pure function of stored inputs would
//! fail forever). A void round selects and pays nobody and leaves the aggregate unchanged,
//! but it is committed like any other: it takes its number `k`, its step becomes `t_last`,
//! its record carries the reason (`BanditRound.void_reason`), and every client syncs it
//! (`selected` false unless an earlier missed round aggregated its data) before the next
//! step, so the run goes on.
//!
//! **Invariants.** Only the driver (`driver`) opens, settles, commits and closes rounds
//! and finishes the run; the handlers only validate, make durable, record and wake it. A
//! repeated identical submission of anything durable is acknowledged again; a different one
//! for the same step or round is refused (ALREADY_EXISTS); when a write reached the store
//! although it reported failure, the stored answer is the one the run uses (as it would
//! after a restart) and a different one is refused the same way. Every acknowledged step,
//! report, upload and sync survives a restart: the driver reloads the last step, the
//! aggregate, the round counter and the open round's reports and uploads, reopens the open
//! round's report phase (clients whose report is stored have nothing to re-send, though
//! re-sending it is harmless), and re-sends the sync of the last round if no step followed
//! it. A commit that reached the disk although it reported failure is adopted, never
//! repeated, so no payment is lost or paid twice. A step is recorded once, played or
//! skipped: the driver skips a step and a handler records it under the state lock, so
//! whichever comes first is the step's record and the other is refused.

pub(crate) mod driver;
pub mod round;
pub mod settings;
pub(crate) mod submit;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fedval_proto::v1 as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::config::FederationConfig;
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{FedState, NextTask};
use crate::store::{BanditReport, BanditStepRecord};

pub use round::Settlement;
pub use settings::{BanditMechanism, BanditSettings};
pub use submit::Submission;

/// Largest reported cost accepted: keeps every critical value (a cost times a ratio of
/// log-det gains) finite, so a round's payments can always be recorded.
pub const MAX_REPORTED_COST: f64 = 1.0e12;
/// Largest absolute entry of a Gram update or a reward vector accepted: keeps the
/// aggregate of up to `MAX_BANDIT_CLIENTS` clients over many rounds finite.
pub const MAX_STATISTIC_ABS: f64 = 1.0e15;
/// Name of the round-record metric that counts the run's skipped steps up to the round's
/// step (module docs: skipped steps).
pub const SKIPPED_STEPS_METRIC: &str = "skipped_steps";

/// The active client of step `step`: a uniform draw over `clients` (enrollment order) from
/// the stream `step` of a ChaCha8 generator seeded with `seed`.
pub fn active_client(seed: u64, step: u64, clients: usize) -> usize {
    if clients <= 1 {
        return 0;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    rng.random_range(0..clients)
}

/// The server's aggregate: `V_g` (row-major `d x d`) and `b_g` (`d`).
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// Sum of the aggregated Gram updates.
    pub v_g: Vec<f64>,
    /// Sum of the aggregated reward vectors.
    pub b_g: Vec<f64>,
}

impl Aggregate {
    /// The empty aggregate of dimension `d`.
    pub fn zeros(d: usize) -> Self {
        Self {
            v_g: vec![0.0; d * d],
            b_g: vec![0.0; d],
        }
    }

    /// Splits a stored `[V_g, b_g]` of dimension `d`; `None` if its length is wrong.
    pub fn from_stored(d: usize, values: Vec<f64>) -> Option<Self> {
        if values.len() != d * d + d {
            return None;
        }
        let mut v_g = values;
        let b_g = v_g.split_off(d * d);
        Some(Self { v_g, b_g })
    }

    /// `[V_g, b_g]`, as stored.
    pub fn to_stored(&self) -> Vec<f64> {
        [self.v_g.as_slice(), self.b_g.as_slice()].concat()
    }
}

/// What a bandit client must do next (`NextTask::Bandit`).
#[derive(Clone, Debug, PartialEq)]
pub enum BanditTask {
    /// Play global step `step`; `t_last` is the step of the last communication round.
    Play { step: u64, t_last: u64 },
    /// Report a cost and the pending Gram update for round `round`.
    Report { round: u64 },
    /// Upload the pending reward vector for round `round` (the client was selected).
    Upload { round: u64 },
    /// Download the aggregate after round `round` and acknowledge it.
    Sync {
        round: u64,
        aggregate: Arc<Aggregate>,
        /// The aggregate holds the client's pending statistics: clear them.
        selected: bool,
        /// The client's payment in `round`.
        payment: f64,
    },
}

impl BanditTask {
    /// The wire form.
    pub fn to_proto(&self) -> pb::BanditTask {
        use pb::bandit_task::Phase;
        let phase = match self {
            BanditTask::Play { step, t_last } => Phase::Play(pb::BanditPlay {
                step: *step,
                t_last: *t_last,
            }),
            BanditTask::Report { round } => {
                Phase::Report(pb::BanditReportRequest { round: *round })
            }
            BanditTask::Upload { round } => {
                Phase::Upload(pb::BanditUploadRequest { round: *round })
            }
            BanditTask::Sync {
                round,
                aggregate,
                selected,
                payment,
            } => Phase::Sync(pb::BanditSync {
                round: *round,
                v_g: aggregate.v_g.clone(),
                b_g: aggregate.b_g.clone(),
                selected: *selected,
                payment: *payment,
            }),
        };
        pb::BanditTask { phase: Some(phase) }
    }
}

/// Where an open communication round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Collecting cost reports.
    Report,
    /// The driver is selecting and pricing (no reports, no uploads yet).
    Settling,
    /// Collecting the selected clients' uploads.
    Upload,
    /// The driver is committing (no more uploads).
    Committing,
}

/// An open communication round.
#[derive(Debug)]
pub(crate) struct CommRound {
    /// Its number `k`.
    pub round: u64,
    /// The step whose trigger opened it.
    pub step: u64,
    /// That step's active client.
    pub trigger_client: String,
    /// The trigger statistic it claimed for that step.
    pub claimed_statistic: f64,
    pub phase: Phase,
    /// When the current phase closes without the missing clients.
    pub deadline: Instant,
    /// Durable reports, by client.
    pub reports: BTreeMap<String, Arc<BanditReport>>,
    /// Durable uploads, by client.
    pub uploads: BTreeMap<String, Arc<Vec<f64>>>,
    /// The selection and prices, once the report phase closed.
    pub settlement: Option<Arc<Settlement>>,
}

/// A started bandit run (inside the federation's state lock).
#[derive(Debug)]
pub(crate) struct Run {
    /// The last durable step (0 before the first).
    pub step: u64,
    /// Its record.
    pub last: Option<BanditStepRecord>,
    /// Step of the last committed round (0 before the first).
    pub t_last: u64,
    /// Committed communication rounds.
    pub rounds: u64,
    /// `(V_g, b_g)` after the last committed round.
    pub aggregate: Arc<Aggregate>,
    /// The open communication round, if any.
    pub open: Option<CommRound>,
    /// While the sync phase of round `rounds` is open: when it closes.
    pub sync_deadline: Option<Instant>,
    /// The last round each client acknowledged downloading (durable).
    pub synced: HashMap<String, u64>,
    /// The last round whose aggregate holds each client's data.
    pub aggregated_in: HashMap<String, u64>,
    /// Payments of round `rounds`, by client.
    pub paid: HashMap<String, f64>,
    /// Steps skipped so far (durable: the skipped records of the step log).
    pub skipped: u64,
    /// The step open for play and when it is skipped if its active client has not answered
    /// (set by the driver once play opens; not durable: a restart starts it again).
    pub play_deadline: Option<(u64, Instant)>,
}

impl Run {
    /// The last round `client_id` downloaded.
    pub fn synced(&self, client_id: &str) -> u64 {
        self.synced.get(client_id).copied().unwrap_or(0)
    }

    /// Whether the last step triggered a round that has not been committed yet.
    pub fn round_due(&self) -> bool {
        self.last
            .as_ref()
            .is_some_and(|l| l.triggered && l.step > self.t_last)
    }

    /// The sync task of the latest round for `client_id`.
    fn sync_task(&self, client_id: &str) -> BanditTask {
        BanditTask::Sync {
            round: self.rounds,
            aggregate: self.aggregate.clone(),
            selected: self.aggregated_in.get(client_id).copied().unwrap_or(0)
                > self.synced(client_id),
            payment: self.paid.get(client_id).copied().unwrap_or(0.0),
        }
    }

    /// Whether step `step + 1` may be played now: no round open or due, the sync phase
    /// over, and the horizon not reached.
    pub fn play_open(&self, horizon: u64) -> bool {
        self.open.is_none()
            && !self.round_due()
            && self.sync_deadline.is_none()
            && self.step < horizon
    }
}

/// A bandit federation's state (inside the federation's state lock).
#[derive(Debug, Default)]
pub(crate) struct BanditState {
    /// The run, once it started (or, after a restart, once the driver reloaded it).
    pub run: Option<Run>,
}

/// Enrollment rule of a bandit federation, checked under the state lock: the run starts
/// with exactly `min_clients` clients, so nobody joins once they are all in.
pub(crate) fn check_enrollment(config: &FederationConfig, st: &FedState) -> ServiceResult<()> {
    if st.bandit.run.is_some() || st.clients.len() >= config.min_clients {
        return Err(ServiceError::FailedPrecondition(format!(
            "bandit federation `{}` runs with its {} clients (min_clients), who are all enrolled; it takes no new clients",
            config.id, config.min_clients
        )));
    }
    Ok(())
}

/// The enrolled client ids, in enrollment order.
pub(crate) fn client_ids(st: &FedState) -> Vec<String> {
    st.clients.iter().map(|c| c.client_id.clone()).collect()
}

/// The client whose turn step `step` is.
pub(crate) fn active_id<'a>(
    config: &FederationConfig,
    settings: &BanditSettings,
    st: &'a FedState,
    step: u64,
) -> Option<&'a str> {
    let seed = settings.seed.unwrap_or(config.seed);
    st.clients
        .get(active_client(seed, step, st.clients.len()))
        .map(|c| c.client_id.as_str())
}

/// The refusal of a late submission of step `step`, which was skipped after `timeout_ms`.
pub(crate) fn skipped_error(step: u64, timeout_ms: u64) -> ServiceError {
    ServiceError::FailedPrecondition(format!(
        "step {step} was skipped after {timeout_ms} ms without an answer; pull the next task"
    ))
}

/// What a client of a bandit federation should do now (the federation is neither
/// finished nor stopped).
pub(crate) fn next_task(
    config: &FederationConfig,
    settings: &BanditSettings,
    st: &FedState,
    client_id: &str,
) -> NextTask {
    let reason = match &st.bandit.run {
        None => format!(
            "waiting for clients: {} of {} enrolled",
            st.clients.len(),
            config.min_clients
        ),
        Some(run) => match task_of(config, settings, st, run, client_id) {
            Ok(task) => return NextTask::Bandit(task),
            Err(reason) => reason,
        },
    };
    let reason = match &st.loop_error {
        Some(e) => format!("{reason}; the coordinator is retrying after an error: {e}"),
        None => reason,
    };
    NextTask::Wait { reason }
}

/// The task of `client_id` in a started run, or why it waits.
fn task_of(
    config: &FederationConfig,
    settings: &BanditSettings,
    st: &FedState,
    run: &Run,
    client_id: &str,
) -> Result<BanditTask, String> {
    if run.rounds > 0 && run.synced(client_id) < run.rounds {
        return Ok(run.sync_task(client_id));
    }
    if let Some(r) = &run.open {
        let k = r.round;
        return match r.phase {
            Phase::Report if !r.reports.contains_key(client_id) => {
                Ok(BanditTask::Report { round: k })
            }
            Phase::Report => Err(format!(
                "round {k}: cost report received; waiting for the other clients"
            )),
            Phase::Settling => Err(format!("round {k}: selecting the participants")),
            Phase::Upload
                if !r.uploads.contains_key(client_id)
                    && r.settlement
                        .as_ref()
                        .is_some_and(|s| s.is_selected(client_id)) =>
            {
                Ok(BanditTask::Upload { round: k })
            }
            Phase::Upload => Err(format!(
                "round {k}: waiting for the selected clients' uploads"
            )),
            Phase::Committing => Err(format!("round {k}: committing")),
        };
    }
    if run.round_due() {
        return Err(format!(
            "step {} triggered communication round {}; it opens shortly",
            run.step,
            run.rounds + 1
        ));
    }
    if run.sync_deadline.is_some() {
        return Err(format!(
            "round {}: waiting for every client to download the aggregate",
            run.rounds
        ));
    }
    if run.step >= settings.horizon {
        return Err(format!(
            "the run reached its horizon ({} steps); finishing",
            settings.horizon
        ));
    }
    let step = run.step + 1;
    match active_id(config, settings, st, step) {
        Some(active) if active == client_id => Ok(BanditTask::Play {
            step,
            t_last: run.t_last,
        }),
        Some(active) => Err(format!("step {step} is {active}'s turn")),
        None => Err(format!("step {step} has no active client")),
    }
}

#[cfg(test)]
mod tests;
