//! The horizontal round state machine of one federation.
//!
//! The loop owns the round (as in Flower's Strategy): it waits for enough clients,
//! opens round r (select, distribute), collects updates until every selected client
//! has uploaded or the deadline passes (stragglers are recorded, not waited for),
//! closes the round, aggregates it off the async runtime (`round_close`), and commits
//! the result atomically; the valuation worker (`valuation_worker`) values committed
//! rounds behind it, at most `valuation.max_lag_rounds` rounds late. Handlers never
//! open or close rounds.
//!
//! After a restart the loop reopens round `committed + 1` and reloads every update the
//! store already holds for it, so nothing acknowledged before the crash is lost.
//!
//! A failing step (a storage error while opening, closing or committing a round) does
//! not end the loop: it is logged, recorded as the federation's `loop_error` (shown by
//! Admin and in clients' Wait reasons) and retried with capped exponential back-off, so
//! a transient fault never leaves clients waiting forever. A commit that reached the
//! disk although it reported failure is adopted, never committed twice.
//!
//! A FACT federation settles each round before committing it (`fact::settlement`): the
//! round's penalties and prizes are written in the round's own batch and announced with
//! `Event::LedgerRecorded` after it (also when an adopted commit brought them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fedval_core::reputation::{FairRewardState, RfflState};
use tokio::sync::{MutexGuard, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{FairRewardSettings, FederationConfig, RfflSettings};
use crate::error::{ServiceError, ServiceResult};
use crate::fair_reward::{FairRewardInputs, close_fair_reward_round};
use crate::federation::{
    AcceptedUpdate, Event, FedState, Federation, GlobalModel, OpenRound, ValuationJob, now_ms,
    restore_personal,
};
use crate::round_close::{RfflInputs, close_rffl_round, close_round};
use crate::round_value::values_rounds;
use crate::store::{
    ClientReputation, FairRewardRound, FederationRecord, FederationStatus, RoundRecord, StoreError,
    ValuationStatus,
};

/// First delay before a failed step is retried; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between two attempts of a failing step.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs `fed`'s rounds (a vertical federation's passes: `vertical::driver`; a bandit
/// federation's protocol: `bandit::driver`) until it finishes, is stopped, or `shutdown`
/// turns true.
///
/// The loop runs on its own task so that even a panic is logged and shown as the
/// federation's error instead of vanishing; aborting this future aborts that task.
pub(crate) async fn run(fed: Arc<Federation>, shutdown: watch::Receiver<bool>) {
    let f = fed.clone();
    let task = if fed.vertical().is_some() {
        tokio::spawn(drive(
            f,
            shutdown,
            "vertical driver",
            crate::vertical::driver::step,
        ))
    } else if fed.config().bandit.is_some() {
        tokio::spawn(drive(
            f,
            shutdown,
            "bandit driver",
            crate::bandit::driver::step,
        ))
    } else {
        tokio::spawn(drive(f, shutdown, "round loop", step))
    };
    let mut inner = AbortOnDrop(task);
    if let Err(e) = (&mut inner.0).await
        && e.is_panic()
    {
        let message = format!("round loop panicked: {e}; restart the server to resume");
        tracing::error!(federation = %fed.id(), error = %message, "round loop died");
        fed.set_loop_error(Some(message)).await;
    }
}

/// Aborts the task when dropped, so cancelling [`run`] cancels the loop too.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a loop does after one step.
pub(crate) enum Step {
    /// Keep going.
    Continue,
    /// The federation ended or the server shuts down.
    Exit,
}

/// Back-off before retry number `failures` (1-based): doubling from [`RETRY_FIRST`],
/// capped at [`RETRY_MAX`].
pub(crate) fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

/// The failure bookkeeping the horizontal round loop and the vertical driver share: a
/// failing step is logged (as `what`), shown as the federation's `loop_error` and retried
/// after [`retry_delay`]; the first success after failures clears that error.
pub(crate) struct Retry {
    /// Names the loop in log lines.
    what: &'static str,
    /// Consecutive failed steps so far.
    failures: u32,
}

impl Retry {
    /// Bookkeeping for the loop named `what`, with no failures yet.
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, failures: 0 }
    }

    /// Settles one step's `outcome`: answers [`Step::Exit`] when the loop must end (the
    /// step said so, or `shutdown` turned true during a back-off), else [`Step::Continue`].
    pub(crate) async fn settle(
        &mut self,
        fed: &Federation,
        outcome: ServiceResult<Step>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Step {
        let what = self.what;
        match outcome {
            Ok(Step::Exit) => Step::Exit,
            Ok(Step::Continue) => {
                if self.failures > 0 {
                    let failures = self.failures;
                    tracing::info!(federation = %fed.id(), failures, "{what} recovered");
                    fed.set_loop_error(None).await;
                    self.failures = 0;
                }
                Step::Continue
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let failures = self.failures;
                let delay = retry_delay(failures);
                tracing::error!(federation = %fed.id(), error = %e, failures, ?delay, "{what} step failed; retrying");
                fed.set_loop_error(Some(e.to_string())).await;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => Step::Continue,
                    _ = shutdown.changed() => Step::Exit,
                }
            }
        }
    }
}

/// Runs one kind of federation's `step` (a horizontal round, a vertical pass, a bandit
/// step) until it exits or `shutdown` turns true, retrying failed steps with [`Retry`].
async fn drive(
    fed: Arc<Federation>,
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
    mut step: impl AsyncFnMut(
        &Arc<Federation>,
        &mut watch::Receiver<u64>,
        &mut watch::Receiver<bool>,
    ) -> ServiceResult<Step>,
) {
    let mut changes = fed.subscribe_changes();
    let mut retry = Retry::new(name);
    while !*shutdown.borrow() {
        let outcome = step(&fed, &mut changes, &mut shutdown).await;
        if let Step::Exit = retry.settle(&fed, outcome, &mut shutdown).await {
            return;
        }
    }
}

/// One pass: open (or finish), collect, close and commit a round.
async fn step(
    fed: &Arc<Federation>,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> ServiceResult<Step> {
    match open_or_finish(fed).await? {
        Some(Step::Exit) => return Ok(Step::Exit),
        Some(Step::Continue) => {}
        None => {
            // Not enough clients yet: wait for an enrollment.
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown.changed() => return Ok(Step::Exit),
            }
            return Ok(Step::Continue);
        }
    }
    if let Step::Exit = collect(fed, changes, shutdown).await {
        return Ok(Step::Exit);
    }
    close_and_commit(fed).await?;
    Ok(Step::Continue)
}

/// The [`Event::Ended`] a loop emits before it exits, if the federation `record`
/// describes has finished or was stopped.
pub(crate) fn ended_event(record: &FederationRecord) -> Option<Event> {
    matches!(
        record.status,
        FederationStatus::Finished | FederationStatus::Stopped
    )
    .then(|| Event::Ended {
        status: record.status,
        committed_rounds: record.committed_rounds,
    })
}

/// Finishes the federation, or makes sure a round is open. `None`: waiting for clients.
async fn open_or_finish(fed: &Arc<Federation>) -> ServiceResult<Option<Step>> {
    let config = fed.config();
    let mut st = fed.state.lock().await;
    if let Some(ended) = ended_event(&st.record) {
        drop(st);
        fed.emit(ended);
        return Ok(Some(Step::Exit));
    }
    if st.record.committed_rounds >= config.rounds {
        if !st.pending_valuation.is_empty() {
            // Finished means valued too: wait for the valuation worker.
            return Ok(None);
        }
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Finished;
        fed.store().put_federation(&rec)?;
        st.record = rec;
        let committed = st.record.committed_rounds;
        drop(st);
        tracing::info!(federation = %fed.id(), rounds = committed, "federation finished");
        fed.notify();
        fed.emit(Event::Ended {
            status: FederationStatus::Finished,
            committed_rounds: committed,
        });
        return Ok(Some(Step::Exit));
    }
    if st.round.is_some() {
        return Ok(Some(Step::Continue));
    }
    if st.clients.len() < config.min_clients {
        return Ok(None);
    }
    let number = st.record.committed_rounds + 1;
    // Valuation may lag behind training by at most `max_lag_rounds` rounds.
    if let Some(&oldest) = st.pending_valuation.keys().next()
        && oldest.saturating_add(config.valuation.max_lag_rounds) < number
    {
        return Ok(None);
    }
    // Clients removed by reputation (RFFL) are never selected again.
    let eligible: Vec<_> = st
        .clients
        .iter()
        .filter(|c| st.removed_in(&c.client_id).is_none())
        .cloned()
        .collect();
    let mut selected = fed.select(&eligible, number);
    // Updates acknowledged before a restart belong to this round.
    let mut received = BTreeMap::new();
    for (record, delta) in fed.store().list_updates(fed.id(), number)? {
        selected.insert(record.client_id.clone());
        received.insert(
            record.client_id.clone(),
            AcceptedUpdate {
                record,
                delta: Arc::new(delta),
            },
        );
    }
    // Persist `running` before the round exists, so a failed write leaves no half-open state.
    if st.record.status == FederationStatus::Waiting {
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Running;
        fed.store().put_federation(&rec)?;
        st.record = rec;
    }
    let timeout = Duration::from_millis(config.round_timeout_ms);
    let restored = received.len();
    st.round = Some(OpenRound {
        number,
        selected: selected.clone(),
        received,
        deadline: Instant::now() + timeout,
        deadline_wall_ms: now_ms().saturating_add(config.round_timeout_ms),
        closed: false,
    });
    drop(st);
    tracing::info!(federation = %fed.id(), round = number, selected = selected.len(), restored, "round opened");
    fed.emit(Event::RoundStarted {
        round: number,
        selected: selected.into_iter().collect(),
    });
    fed.notify();
    Ok(Some(Step::Continue))
}

/// Waits until every selected client uploaded, the deadline passed, or the federation stopped.
async fn collect(
    fed: &Arc<Federation>,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Step {
    loop {
        let deadline = {
            let st = fed.state.lock().await;
            match &st.round {
                Some(r) if !r.closed && r.received.len() < r.selected.len() => r.deadline,
                _ => return Step::Continue,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Step::Continue,
            _ = changes.changed() => {}
            _ = shutdown.changed() => return Step::Exit,
        }
    }
}

/// Closes the open round, aggregates and values it, and commits it atomically.
async fn close_and_commit(fed: &Arc<Federation>) -> ServiceResult<()> {
    let (number, selected, updates, model, policy, clients) = {
        let mut st = fed.state.lock().await;
        let model = st.model.clone();
        let policy = PolicyInputs::gather(fed.config(), &st, &model);
        // FACT settles the round over the participants' reported costs.
        let clients = match fed.config().fact {
            Some(_) => st.clients.clone(),
            None => Vec::new(),
        };
        let Some(r) = st.round.as_mut() else {
            return Ok(());
        };
        r.closed = true;
        let updates: Vec<AcceptedUpdate> = r.received.values().cloned().collect();
        (
            r.number,
            r.selected.clone(),
            updates,
            model,
            policy,
            clients,
        )
    };
    fed.notify();
    if updates.is_empty() {
        tracing::warn!(federation = %fed.id(), round = number, "no update arrived before the deadline; reopening the round");
        let mut st = fed.state.lock().await;
        st.round = None;
        return Ok(());
    }
    let fed2 = fed.clone();
    let updates2 = updates.clone();
    let global = model.params.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let config = fed2.config();
        let validation = fed2.validation().map(|v| v.as_ref());
        match policy {
            PolicyInputs::Plain => {
                close_round(config, validation, &global, &updates2, number).map(Closed::Plain)
            }
            PolicyInputs::Rffl(settings, inputs) => close_rffl_round(
                config, &settings, validation, &global, inputs, &updates2, number,
            )
            .map(Closed::Rffl),
            PolicyInputs::Fair(settings, inputs) => close_fair_reward_round(
                config, &settings, validation, &global, inputs, &updates2, number,
            )
            .map(Closed::Fair),
        }
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("round {number} closing task failed: {e}")))??;
    let new_version = model.version + 1;
    let (outcome, mut policy) = match closed {
        Closed::Plain(outcome) => (outcome, PolicyResult::default()),
        Closed::Rffl(c) => (
            c.aggregated,
            PolicyResult {
                updated: c
                    .personal
                    .into_iter()
                    .map(|(id, p)| (id, Arc::new(GlobalModel::new(new_version, p))))
                    .collect(),
                rffl: Some(c.state),
                reputations: c.reputations,
                threshold: c.threshold,
                // The valuation values what the round aggregated: the clipped updates.
                valued_updates: Some(c.clipped),
                ..PolicyResult::default()
            },
        ),
        Closed::Fair(c) => (
            c.aggregated,
            PolicyResult {
                recipients: c.outcome.recipients,
                fair: Some(c.outcome.state),
                fair_round: Some(c.outcome.record),
                ..PolicyResult::default()
            },
        ),
    };
    // FACT: the round's penalties and prizes, committed with the round (fact::settlement).
    let fact = crate::fact::settlement::settle_round(
        fed.config(),
        number,
        &clients,
        updates.iter().map(|u| &u.record),
        now_ms(),
    );
    let mut metrics = outcome.metrics;
    let ledger = match fact {
        Some(f) => {
            metrics.extend(f.metrics);
            f.entries
        }
        None => Vec::new(),
    };
    let updates = policy.valued_updates.take().unwrap_or(updates);

    let participants: Vec<String> = updates.iter().map(|u| u.record.client_id.clone()).collect();
    let stragglers: Vec<String> = selected
        .iter()
        .filter(|c| !participants.contains(c))
        .cloned()
        .collect();
    let valued = values_rounds(fed.config());
    // The valuation runs after the commit (valuation_worker) and completes this record.
    let record = RoundRecord {
        reputations: std::mem::take(&mut policy.reputations),
        reputation_threshold: policy.threshold,
        fair_reward: policy.fair_round.take(),
        ..RoundRecord::committed(
            number,
            new_version,
            participants,
            stragglers,
            metrics,
            valued,
        )
    };
    let new_model = Arc::new(GlobalModel::new(new_version, outcome.params));
    // Fair reward: the recipients' own model becomes the new global model.
    for client_id in std::mem::take(&mut policy.recipients) {
        policy.updated.insert(client_id, new_model.clone());
    }
    let mut st = fed.state.lock().await;
    let mut fed_rec = st.record.clone();
    fed_rec.committed_rounds = number;
    fed_rec.model_version = new_version;
    let personal = if fed.config().personal_models() {
        fed_rec.rffl = policy.rffl;
        fed_rec.fair_reward = policy.fair;
        st.next_personal(policy.updated, &model, new_version)
    } else {
        Vec::new()
    };
    let store = fed.store().clone();
    let (id, rec2, params, fed_rec2, personal2, ledger2) = (
        fed.id().to_string(),
        record.clone(),
        new_model.params.clone(),
        fed_rec.clone(),
        personal.clone(),
        ledger.clone(),
    );
    let committed = tokio::task::spawn_blocking(move || {
        let views: Vec<(String, &[f32])> = personal2
            .iter()
            .map(|(c, m)| (c.clone(), m.params.as_slice()))
            .collect();
        store.commit_round(&id, &rec2, &params, &views, &ledger2, &fed_rec2)
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("commit task failed: {e}")))?;
    match committed {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => return adopt_committed(fed, st, number),
        Err(e) => return Err(e.into()),
    }
    st.record = fed_rec;
    st.personal.extend(personal);
    st.model = new_model;
    st.round = None;
    if valued {
        let job = ValuationJob {
            record: record.clone(),
            global: model.params.clone(),
            updates,
        };
        st.pending_valuation.insert(number, Some(job));
    }
    drop(st);
    tracing::info!(federation = %fed.id(), round = number, "round committed");
    fed.emit_committed(record, ledger);
    fed.notify();
    Ok(())
}

/// What closing a round needs from the federation, by reward policy.
enum PolicyInputs {
    /// No reward policy: every client gets the global model.
    Plain,
    /// RFFL reputations.
    Rffl(RfflSettings, RfflInputs),
    /// Fair yet asymptotically equal rewards.
    Fair(FairRewardSettings, FairRewardInputs),
}

impl PolicyInputs {
    /// The inputs of the open round's policy, taken under the state lock.
    fn gather(config: &FederationConfig, st: &FedState, model: &Arc<GlobalModel>) -> Self {
        if let Some(settings) = config.reputation {
            return PolicyInputs::Rffl(
                settings,
                RfflInputs {
                    clients: st
                        .clients
                        .iter()
                        .map(|c| {
                            let own = st.personal.get(&c.client_id).unwrap_or(model);
                            (c.client_id.clone(), own.params.clone())
                        })
                        .collect(),
                    state: st.record.rffl.clone(),
                    data_sizes: st.clients.iter().map(|c| c.num_samples).collect(),
                },
            );
        }
        if let Some(settings) = config.fair_reward {
            return PolicyInputs::Fair(
                settings,
                FairRewardInputs {
                    clients: st.clients.iter().map(|c| c.client_id.clone()).collect(),
                    state: st.record.fair_reward.clone(),
                },
            );
        }
        PolicyInputs::Plain
    }
}

/// What closing a round produced, by reward policy.
enum Closed {
    Plain(crate::round_close::Aggregated),
    Rffl(crate::round_close::RfflClosed),
    Fair(crate::fair_reward::FairRewardClosed),
}

/// What a reward policy adds to a closed round (all empty without one).
#[derive(Default)]
struct PolicyResult {
    /// New own models (at the new version) by client; the others keep theirs.
    updated: BTreeMap<String, Arc<GlobalModel>>,
    /// Fair reward: clients whose own model becomes the new global model.
    recipients: Vec<String>,
    /// RFFL state after the round.
    rffl: Option<RfflState>,
    /// Fair-reward state after the round.
    fair: Option<FairRewardState>,
    /// RFFL reputations after the round.
    reputations: Vec<ClientReputation>,
    /// RFFL removal threshold of the round.
    threshold: Option<f64>,
    /// Fair reward: what the round record keeps.
    fair_round: Option<FairRewardRound>,
    /// The updates to value instead of the uploaded ones (RFFL: clipped).
    valued_updates: Option<Vec<AcceptedUpdate>>,
}

/// Round `number` is already in the store (an earlier attempt's commit reached the disk
/// although it reported a failure): take the stored round and model instead of
/// committing twice, and make the federation record agree with them.
fn adopt_committed(
    fed: &Arc<Federation>,
    mut st: MutexGuard<'_, FedState>,
    number: u64,
) -> ServiceResult<()> {
    let store = fed.store();
    let record = store.get_round(fed.id(), number)?.ok_or_else(|| {
        ServiceError::Internal(format!(
            "committing round {number} conflicts, yet no record of it is stored"
        ))
    })?;
    let params = store
        .get_model(fed.id(), record.model_version)?
        .ok_or_else(|| {
            ServiceError::Internal(format!(
                "model version {} of committed round {number} is missing from the store",
                record.model_version
            ))
        })?;
    // The in-memory status wins: it carries a stop that happened meanwhile.
    let mut fed_rec = st.record.clone();
    fed_rec.committed_rounds = number;
    fed_rec.model_version = record.model_version;
    if let Some(stored) = store.get_federation(fed.id())? {
        fed_rec.rffl = stored.rffl;
        fed_rec.fair_reward = stored.fair_reward;
    }
    let model = GlobalModel::new(record.model_version, params);
    let personal = restore_personal(store, &fed_rec, &st.clients, &model)?;
    // Its ledger entries (FACT) were committed with it and never announced.
    let ledger = store.list_round_ledger(fed.id(), number)?;
    store.put_federation(&fed_rec)?;
    st.personal = personal;
    st.model = Arc::new(model);
    st.record = fed_rec;
    st.round = None;
    if record.valuation_status == ValuationStatus::Pending {
        st.pending_valuation.insert(number, None);
    }
    drop(st);
    tracing::warn!(federation = %fed.id(), round = number, "round was already committed; adopted the stored result");
    fed.emit_committed(record, ledger);
    fed.notify();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::sync::broadcast;

    use super::*;
    use crate::federation::tests::{Faults, FaultyBackend, claim, config, until};
    use crate::federation::{Federation, NextTask};
    use crate::store::Store;

    async fn committed_event(events: &mut broadcast::Receiver<Event>) -> RoundRecord {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("an event arrives")
                .expect("channel open")
            {
                Event::RoundCommitted(r) => return *r,
                _ => continue,
            }
        }
    }

    /// A one-client federation with its loop running, and the client's id.
    async fn running(
        store: Store,
        rounds: u64,
    ) -> (Arc<Federation>, String, watch::Sender<bool>, JoinHandle<()>) {
        let fed = Federation::create(config(rounds), store).expect("created");
        let (client, _) = fed
            .enroll("s", "alice", 10, 0, 0.0)
            .await
            .expect("enrolled");
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(run(fed.clone(), stop_rx));
        (fed, client, stop_tx, handle)
    }

    async fn upload_when_asked(fed: &Arc<Federation>, client: &str, round: u64) {
        until(fed, || async {
            matches!(fed.next_task(client).await, NextTask::Train { round: r, .. } if r == round)
        })
        .await;
        let delta = vec![0.25f32; 9];
        let mut c = claim(round, &delta);
        c.model_version = fed.state.lock().await.model.version;
        fed.accept_update(client, c, delta).await.expect("accepted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_commit_is_retried_and_shown_until_it_succeeds() {
        let faults = Arc::new(Faults::default());
        faults.fail_round_commits.store(true, Ordering::SeqCst);
        let (fed, client, stop, handle) = running(FaultyBackend::store(faults.clone()), 1).await;
        let mut events = fed.subscribe_events();
        upload_when_asked(&fed, &client, 1).await;

        // The loop does not die: it records the error and keeps trying.
        until(&fed, || async { fed.loop_error().await.is_some() }).await;
        let error = fed.loop_error().await.expect("error shown");
        assert!(error.contains("injected fault"), "{error}");
        assert!(!handle.is_finished(), "the round loop is still alive");
        match fed.next_task(&client).await {
            NextTask::Wait { reason } => assert!(reason.contains("injected fault"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }

        // The fault clears: the round commits with the accepted update, exactly once.
        faults.fail_round_commits.store(false, Ordering::SeqCst);
        let record = committed_event(&mut events).await;
        assert_eq!(
            (record.round, record.participants),
            (1, vec![client.clone()])
        );
        until(&fed, || async { fed.loop_error().await.is_none() }).await;
        // The error clears when the commit step succeeds; finishing is the next step.
        until(&fed, || async {
            fed.snapshot().await.0.status == FederationStatus::Finished
        })
        .await;
        let (rec, _) = fed.snapshot().await;
        assert_eq!(
            (rec.committed_rounds, rec.status),
            (1, FederationStatus::Finished)
        );
        assert_eq!(fed.store().list_rounds("unit").expect("rounds").len(), 1);
        let _ = stop.send(true);
        handle.await.expect("loop ends");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_reached_the_disk_is_adopted_not_repeated() {
        let faults = Arc::new(Faults::default());
        faults.durable_but_failed.store(1, Ordering::SeqCst);
        let (fed, client, stop, handle) = running(FaultyBackend::store(faults.clone()), 2).await;
        let mut events = fed.subscribe_events();
        upload_when_asked(&fed, &client, 1).await;
        let first = committed_event(&mut events).await;
        assert_eq!(first.round, 1);
        {
            let st = fed.state.lock().await;
            assert_eq!((st.record.committed_rounds, st.model.version), (1, 1));
            assert_eq!(st.record.model_version, 1);
        }
        let stored = fed
            .store()
            .get_federation("unit")
            .expect("read")
            .expect("exists");
        assert_eq!((stored.committed_rounds, stored.model_version), (1, 1));

        // The federation goes on to round 2 and finishes.
        upload_when_asked(&fed, &client, 2).await;
        let second = committed_event(&mut events).await;
        assert_eq!(second.round, 2);
        let rounds: Vec<u64> = fed
            .store()
            .list_rounds("unit")
            .expect("rounds")
            .iter()
            .map(|r| r.round)
            .collect();
        assert_eq!(rounds, vec![1, 2]);
        let _ = stop.send(true);
        handle.await.expect("loop ends");
    }

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let got: Vec<u128> = (1..=5).map(|f| retry_delay(f).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600]);
        assert_eq!(retry_delay(40), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    /// Four honest clients agreeing on a direction and one uploading noise, 12 rounds of
    /// RFFL with a 3-round warm-up: the noisy client alone is removed, told so, refused,
    /// never selected again; reputations are recorded per round, every client has its
    /// own model, and a restart keeps the reputations and the models.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rffl_removes_the_noisy_client_and_only_it() {
        use rand::{Rng, SeedableRng};
        use rand_chacha::ChaCha8Rng;

        let mut cfg = config(12);
        cfg.min_clients = 5;
        // 93 parameters: enough dimensions for noise to be nearly orthogonal.
        let model = fedval_core::model::ModelSpec::LogisticRegression {
            num_features: 30,
            num_classes: 3,
        };
        let dim = model.num_params();
        cfg.model = Some(model);
        cfg.reputation = Some(crate::config::RfflSettings {
            warm_up_rounds: 3,
            ..crate::config::RfflSettings::with_gamma(1.0)
        });
        cfg.validate().expect("valid");
        let store = Store::memory();
        let fed = Federation::create(cfg, store.clone()).expect("created");
        let mut ids = Vec::new();
        for name in ["h0", "h1", "h2", "h3", "noisy"] {
            ids.push(fed.enroll("s", name, 10, 0, 0.0).await.expect("enrolled").0);
        }
        let noisy = ids[4].clone();
        let mut events = fed.subscribe_events();
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(run(fed.clone(), stop_rx));
        // Honest updates (norm > gamma, so clipped like the noise) share one direction.
        let direction: Vec<f32> = (0..dim)
            .map(|i| if i % 2 == 0 { 0.3 } else { -0.2 })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut removed_round = None;
        for round in 1..=12u64 {
            until(&fed, || async {
                matches!(fed.next_task(&ids[0]).await, NextTask::Train { round: r, .. } if r == round)
            })
            .await;
            let mut deltas: Vec<(&String, Vec<f32>)> = ids
                .iter()
                .enumerate()
                .map(|(k, id)| {
                    let delta: Vec<f32> = if *id == noisy {
                        (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
                    } else {
                        direction
                            .iter()
                            .map(|x| x + 0.05 * (k as f32) * rng.random_range(-1.0f32..1.0))
                            .collect()
                    };
                    (id, delta)
                })
                .collect();
            // The noisy client goes first: once removed, its refusal is checked while the
            // round is still open (the honest uploads close it, and the last one ends the
            // federation, after which every upload is refused as "finished").
            deltas.rotate_right(1);
            for (id, delta) in deltas {
                let mut c = claim(round, &delta);
                c.model_version = round - 1;
                match fed.next_task(id).await {
                    NextTask::Train { .. } => {
                        fed.accept_update(id, c, delta).await.expect("accepted");
                    }
                    NextTask::Removed { round: r, reason } => {
                        assert_eq!(*id, noisy, "honest {id} removed: {reason}");
                        assert_eq!(reason, format!("removed by reputation in round {r}"));
                        removed_round.get_or_insert(r);
                        let err = fed.accept_update(id, c, delta).await.expect_err("refused");
                        assert!(
                            matches!(&err, ServiceError::PermissionDenied(m) if m.contains(&format!("removed by reputation in round {r}"))),
                            "{err}"
                        );
                    }
                    other => panic!("round {round}: unexpected task for {id}: {other:?}"),
                }
            }
            let record = committed_event(&mut events).await;
            assert_eq!(record.round, round);
            assert_eq!(record.reputations.len(), 5);
            assert_eq!(record.reputation_threshold.is_some(), round > 3);
            if removed_round.is_some() {
                assert!(
                    !record.participants.contains(&noisy),
                    "removed yet selected"
                );
            }
        }
        // Removal happens after the warm-up, and only of the noisy client.
        let removed_in = removed_round.expect("the noisy client was removed");
        // The first round after the 3-round warm-up (seeded, so exact).
        assert_eq!(removed_in, 4);
        let rounds = store.list_rounds("unit").expect("rounds");
        assert_eq!(rounds.len(), 12);
        let last = rounds.last().expect("last");
        for rep in &last.reputations {
            assert_eq!(rep.removed, rep.client_id == noisy, "{rep:?}");
        }
        let total: f64 = last.reputations.iter().map(|r| r.reputation).sum();
        assert!((total - 1.0).abs() < 1e-9, "reputations sum to {total}");
        let wire = crate::admin::round_to_proto(last);
        assert_eq!(wire.reputations.len(), 5);
        assert_eq!(wire.reputation_threshold, last.reputation_threshold);
        // Every client has its own model; the honest ones differ from each other.
        let own: Vec<Vec<f32>> = {
            let mut v = Vec::new();
            for id in &ids {
                v.push(
                    fed.model_for(id, 12)
                        .await
                        .expect("own model")
                        .params
                        .to_vec(),
                );
            }
            v
        };
        assert_ne!(own[0], own[1]);
        assert_ne!(own[0], own[4]);
        let global = fed.model(12).await.expect("global").params.to_vec();
        assert_ne!(own[0], global);
        // An older version of a client's own model comes from the store.
        let older = fed.model_for(&ids[0], 5).await.expect("version 5");
        assert_eq!(older.version, 5);
        let _ = stop_tx.send(true);
        handle.await.expect("loop ends");

        // A restart keeps the reputations, the removal and the own models.
        let state_before = fed.state.lock().await.record.rffl.clone();
        assert!(state_before.is_some());
        let stored = store.get_federation("unit").expect("read").expect("exists");
        let restored = Federation::restore(stored, store).expect("restored");
        assert_eq!(restored.state.lock().await.record.rffl, state_before);
        assert_eq!(restored.state.lock().await.removed_in(&noisy), Some(4));
        assert_eq!(restored.state.lock().await.removed_in(&ids[0]), None);
        for (id, params) in ids.iter().zip(&own) {
            let m = restored
                .model_for(id, 12)
                .await
                .expect("restored own model");
            assert_eq!(&m.params.to_vec(), params);
        }
    }

    /// Client `k`'s update in round `round` of the fair-reward tests: its own direction
    /// (the third client partly opposes the others) plus seeded noise.
    fn fair_delta(k: usize, round: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(k as u64 * 1000 + round);
        let base = [1.0f32, 0.6, -0.4].get(k).copied().unwrap_or(0.0);
        (0..9)
            .map(|j| base * (1.0 + (j % 3) as f32 * 0.1) + rng.random_range(-0.3f32..0.3))
            .collect()
    }

    /// Runs `rounds` of `fed` with every client of `ids` uploading [`fair_delta`], then
    /// stops the loop; returns the committed records.
    async fn fair_rounds(
        fed: &Arc<Federation>,
        ids: &[String],
        rounds: std::ops::RangeInclusive<u64>,
    ) -> Vec<RoundRecord> {
        let mut events = fed.subscribe_events();
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(run(fed.clone(), stop_rx));
        let mut records = Vec::new();
        for round in rounds {
            for (k, id) in ids.iter().enumerate() {
                until(fed, || async {
                    matches!(fed.next_task(id).await, NextTask::Train { round: r, .. } if r == round)
                })
                .await;
                let delta = fair_delta(k, round);
                let mut c = claim(round, &delta);
                c.model_version = round - 1;
                fed.accept_update(id, c, delta).await.expect("accepted");
            }
            records.push(committed_event(&mut events).await);
        }
        let _ = stop_tx.send(true);
        handle.await.expect("loop ends");
        records
    }

    /// A three-client fair-reward federation of `rounds` rounds with a 4-round window,
    /// `ratio` 0.7 (2 recipients of 3) and significance 0.7, over `store`, all clients
    /// enrolled.
    async fn fair_federation(store: Store, rounds: u64) -> (Arc<Federation>, Vec<String>) {
        let mut cfg = config(rounds);
        cfg.min_clients = 3;
        cfg.fair_reward = Some(crate::config::FairRewardSettings {
            window: Some(4),
            ratio: 0.7,
            significance: 0.7,
            seed: Some(9),
            ..Default::default()
        });
        let fed = Federation::create(cfg, store).expect("created");
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            ids.push(fed.enroll("s", name, 10, 0, 0.0).await.expect("enrolled").0);
        }
        (fed, ids)
    }

    /// Exploration until the stationarity test passes (every participant receives the
    /// new global model), then exploitation (exactly 2 of 3 receive it, the others keep
    /// their model); every round's decision is recorded, and a run restarted after the
    /// first exploitation round continues exactly like an uninterrupted one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fair_reward_explores_then_rewards_and_survives_a_restart() {
        const ROUNDS: u64 = 13;
        let (fed, ids) = fair_federation(Store::memory(), ROUNDS).await;
        let reference = fair_rounds(&fed, &ids, 1..=ROUNDS).await;
        let fair: Vec<&crate::store::FairRewardRound> = reference
            .iter()
            .map(|r| r.fair_reward.as_ref().expect("recorded every round"))
            .collect();
        // Seeded, so exact: the test (window 4) first runs after round 5 and passes
        // (p > 0.7) after round 8; round 9 is the first exploitation round.
        let first_exploiting = reference
            .iter()
            .zip(&fair)
            .find(|(_, f)| !f.exploring)
            .map(|(r, _)| r.round)
            .expect("exploitation reached");
        assert_eq!(first_exploiting, 9);
        for (r, f) in reference.iter().zip(&fair) {
            assert_eq!(f.clients.len(), 3);
            assert_eq!(f.exploring, r.round < first_exploiting, "round {}", r.round);
            let ran = (5..first_exploiting).contains(&r.round);
            assert_eq!(f.p_value.is_some(), ran, "round {}", r.round);
            if let Some(p) = f.p_value {
                assert_eq!(
                    p > 0.7,
                    r.round == first_exploiting - 1,
                    "round {}: {p}",
                    r.round
                );
            }
            let received = f.clients.iter().filter(|c| c.received_model).count();
            if f.exploring {
                assert_eq!(received, 3, "round {}", r.round);
                assert!(f.clients.iter().all(|c| c.probability.is_none()));
            } else {
                // floor(0.7 * 3) = 2; psi is frozen; the probabilities sum to 1.
                assert_eq!(received, 2, "round {}", r.round);
                let total: f64 = f.clients.iter().filter_map(|c| c.probability).sum();
                assert!((total - 1.0).abs() < 1e-9, "round {}: {total}", r.round);
                let last_explored = fair[first_exploiting as usize - 2];
                let psi = |f: &crate::store::FairRewardRound| {
                    f.clients.iter().map(|c| c.psi).collect::<Vec<_>>()
                };
                assert_eq!(psi(f), psi(last_explored));
            }
        }
        // The opposing client has the lowest psi and, with beta = 150, is never drawn.
        let last = fair.last().expect("rounds");
        assert!(last.clients[2].psi < 0.0 && last.clients[0].psi > 0.0);
        assert!(
            fair[first_exploiting as usize - 1..]
                .iter()
                .all(|f| !f.clients[2].received_model)
        );
        // Own models follow the records: a recipient's is the new global model, everyone
        // else keeps the one it had.
        for (r, f) in reference.iter().zip(&fair) {
            let v = r.model_version;
            let global = fed.model(v).await.expect("global").params.clone();
            for (id, c) in ids.iter().zip(&f.clients) {
                assert_eq!(&c.client_id, id);
                let own = fed.model_for(id, v).await.expect("own").params.clone();
                let before = fed
                    .model_for(id, v - 1)
                    .await
                    .expect("before")
                    .params
                    .clone();
                if c.received_model {
                    assert_eq!(own, global, "round {v}, {id}");
                } else {
                    assert_eq!(own, before, "round {v}, {id}");
                    assert_ne!(own, global, "round {v}, {id}");
                }
            }
        }

        // The same run, restarted after the first exploitation round.
        let store = Store::memory();
        let (first, ids2) = fair_federation(store.clone(), ROUNDS).await;
        assert_eq!(ids2, ids);
        let mut restarted = fair_rounds(&first, &ids, 1..=first_exploiting).await;
        let state_before = first.state.lock().await.record.fair_reward.clone();
        assert!(state_before.as_ref().is_some_and(|s| !s.is_exploring()));
        let stored = store.get_federation("unit").expect("read").expect("exists");
        let second = Federation::restore(stored, store).expect("restored");
        assert_eq!(second.state.lock().await.record.fair_reward, state_before);
        for id in &ids {
            let a = first.model_for(id, first_exploiting).await.expect("own");
            let b = second.model_for(id, first_exploiting).await.expect("own");
            assert_eq!(a.params, b.params, "{id}");
        }
        restarted.extend(fair_rounds(&second, &ids, first_exploiting + 1..=ROUNDS).await);
        let decisions = |records: &[RoundRecord]| -> Vec<_> {
            records
                .iter()
                .map(|r| (r.round, r.participants.clone(), r.fair_reward.clone()))
                .collect()
        };
        assert_eq!(decisions(&restarted), decisions(&reference));
        for id in &ids {
            let a = fed.model_for(id, ROUNDS).await.expect("reference");
            let b = second.model_for(id, ROUNDS).await.expect("restarted");
            assert_eq!(a.params, b.params, "{id}");
        }
        assert_eq!(
            second.state.lock().await.record.fair_reward,
            fed.state.lock().await.record.fair_reward
        );
    }
}
