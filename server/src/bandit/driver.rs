//! The state machine of one bandit federation (the bandit counterpart of `round_loop`):
//! it waits for every client, starts (or, after a restart, reloads) the run, opens a
//! communication round when a step triggered one, closes its report phase (selection and
//! prices), commits it after the uploads, closes the sync phase, and finishes the run after
//! the last step. It also skips a step whose active client did not answer in time (module
//! docs of [`super`]: skipped steps). Handlers never change phases; an untriggered step needs
//! the driver only for the next step's deadline (the next active client's task follows from
//! the durable step).
//!
//! A failing step (a storage error) is logged, shown as the federation's `loop_error` and
//! retried with the round loop's capped back-off; a commit that reached the disk although
//! it reported failure is adopted, never committed twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::round::{Closing, Conclusion, Settlement, Trigger, conclude, settle};
use super::{
    Aggregate, BanditSettings, CommRound, Phase, Run, SKIPPED_STEPS_METRIC, active_client,
    client_ids,
};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{Event, FedState, Federation, now_ms};
use crate::round_loop::{Step, ended_event};
use crate::store::{BanditStepRecord, FederationStatus, RoundRecord, StoreError};

/// What the federation needs now.
enum Plan {
    Exit,
    /// A transition was made under the lock: plan again.
    Continue,
    /// Nothing to do until the state changes or the deadline passes.
    Wait(Option<Instant>),
    /// Close the report phase: select and price the participants.
    Settle,
    /// Commit the round after its upload phase.
    Commit,
}

/// One step of a bandit federation: advance the play, round or sync phase, or wait for the
/// clients or the phase's deadline (driven by `round_loop::run`).
pub(crate) async fn step(
    fed: &Arc<Federation>,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> ServiceResult<Step> {
    let Some(settings) = fed.config().bandit else {
        return Ok(Step::Exit);
    };
    match plan(fed, &settings).await? {
        Plan::Exit => Ok(Step::Exit),
        Plan::Continue => Ok(Step::Continue),
        Plan::Wait(deadline) => {
            let until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changes.changed() => Ok(Step::Continue),
                _ = until => Ok(Step::Continue),
                _ = shutdown.changed() => Ok(Step::Exit),
            }
        }
        Plan::Settle => {
            settle_round(fed, settings).await?;
            Ok(Step::Continue)
        }
        Plan::Commit => {
            commit(fed, &settings).await?;
            Ok(Step::Continue)
        }
    }
}

/// How long each phase of a round stays open.
fn timeout(fed: &Federation) -> Duration {
    Duration::from_millis(fed.config().round_timeout_ms)
}

/// Decides the next phase, making the transitions that need no computation.
async fn plan(fed: &Arc<Federation>, settings: &BanditSettings) -> ServiceResult<Plan> {
    let mut st = fed.state.lock().await;
    if let Some(ended) = ended_event(&st.record) {
        drop(st);
        fed.emit(ended);
        return Ok(Plan::Exit);
    }
    if st.bandit.run.is_none() {
        if st.clients.len() < fed.config().min_clients {
            return Ok(Plan::Wait(None));
        }
        start(fed, &mut st)?;
        drop(st);
        fed.notify();
        return Ok(Plan::Continue);
    }
    let now = Instant::now();
    let clients = client_ids(&st);
    let Some(run) = st.bandit.run.as_mut() else {
        return Ok(Plan::Continue);
    };
    if let Some(r) = &run.open {
        return Ok(match r.phase {
            Phase::Report if r.reports.len() >= clients.len() || now >= r.deadline => Plan::Settle,
            Phase::Report => Plan::Wait(Some(r.deadline)),
            Phase::Settling => Plan::Settle,
            Phase::Upload => {
                let all = r
                    .settlement
                    .as_ref()
                    .is_none_or(|s| s.selected.iter().all(|c| r.uploads.contains_key(c)));
                if all || now >= r.deadline {
                    Plan::Commit
                } else {
                    Plan::Wait(Some(r.deadline))
                }
            }
            Phase::Committing => Plan::Commit,
        });
    }
    if run.round_due() {
        let round = open_round(fed, run, &clients)?;
        drop(st);
        fed.emit(Event::RoundStarted {
            round,
            selected: clients,
        });
        fed.notify();
        return Ok(Plan::Continue);
    }
    if let Some(deadline) = run.sync_deadline {
        let rounds = run.rounds;
        if clients.iter().all(|c| run.synced(c) >= rounds) || now >= deadline {
            run.sync_deadline = None;
            drop(st);
            fed.notify();
            return Ok(Plan::Continue);
        }
        return Ok(Plan::Wait(Some(deadline)));
    }
    if run.step >= settings.horizon {
        let (steps, rounds, skipped) = (run.step, run.rounds, run.skipped);
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Finished;
        fed.store().put_federation(&rec)?;
        st.record = rec;
        drop(st);
        tracing::info!(federation = %fed.id(), steps, rounds, skipped, "bandit federation finished");
        fed.notify();
        return Ok(Plan::Continue);
    }
    // Step `run.step + 1` is open for play: skip it once its deadline passed.
    let next = run.step + 1;
    let deadline = match run.play_deadline {
        Some((step, deadline)) if step == next => deadline,
        _ => {
            let deadline = now + timeout(fed);
            run.play_deadline = Some((next, deadline));
            deadline
        }
    };
    if now < deadline {
        return Ok(Plan::Wait(Some(deadline)));
    }
    let seed = settings.seed.unwrap_or(fed.config().seed);
    let active = clients
        .get(active_client(seed, next, clients.len()))
        .cloned()
        .unwrap_or_default();
    skip_step(fed, run, BanditStepRecord::skipped(active, next))?;
    drop(st);
    fed.notify();
    Ok(Plan::Continue)
}

/// Records step `rec.step` as skipped (its active client did not answer in time), durable
/// before the run moves on. If the step log already holds the step (a submission whose
/// write reported failure although it reached the disk), the run adopts the stored record
/// instead, as it would after a restart.
fn skip_step(fed: &Federation, run: &mut Run, rec: BanditStepRecord) -> ServiceResult<()> {
    let (store, id, t) = (fed.store(), fed.id(), rec.step);
    let rec = match store.put_bandit_step(id, &rec) {
        Ok(()) => {
            run.skipped += 1;
            tracing::warn!(federation = %id, step = t, client = %rec.client_id, timeout_ms = fed.config().round_timeout_ms, skipped = run.skipped, "step skipped: the active client did not answer");
            rec
        }
        Err(StoreError::Conflict { .. }) => {
            let stored = store.get_bandit_step(id, t)?.ok_or_else(|| {
                ServiceError::Internal(format!(
                    "federation `{id}`: the store refused step {t} as a duplicate but holds none"
                ))
            })?;
            run.skipped += u64::from(stored.skipped);
            stored
        }
        Err(e) => return Err(e.into()),
    };
    run.step = t;
    run.last = Some(rec);
    Ok(())
}

/// Steps skipped up to `step`, the last durable step: the count recorded with the last
/// committed round `last_round` (through its step `t_last`) plus the skipped records of the
/// step log after it.
fn count_skipped(
    fed: &Federation,
    last_round: Option<&RoundRecord>,
    t_last: u64,
    step: u64,
) -> ServiceResult<u64> {
    let recorded = last_round
        .and_then(|r| {
            r.metrics
                .iter()
                .find(|(name, _)| name == SKIPPED_STEPS_METRIC)
        })
        .map_or(0, |(_, n)| *n as u64);
    let mut since = 0;
    for t in (t_last + 1)..=step {
        since += u64::from(
            fed.store()
                .get_bandit_step(fed.id(), t)?
                .is_some_and(|s| s.skipped),
        );
    }
    Ok(recorded + since)
}

/// Starts the run once every client enrolled, or reloads it after a restart: the last
/// step, the round counter and `t_last`, the aggregate, who downloaded what, and the sync
/// phase of the last round if no step followed it. A round that was open reopens in the
/// next plan (its trigger step is the last step).
fn start(fed: &Federation, st: &mut FedState) -> ServiceResult<()> {
    let Some(settings) = fed.config().bandit else {
        return Ok(());
    };
    let (store, id, d) = (fed.store(), fed.id(), settings.dim as usize);
    let corrupt = |what: String| ServiceError::Internal(format!("federation `{id}`: {what}"));
    let k = st.record.committed_rounds;
    let aggregate = if k == 0 {
        Aggregate::zeros(d)
    } else {
        store
            .get_bandit_aggregate(id)?
            .and_then(|v| Aggregate::from_stored(d, v))
            .ok_or_else(|| {
                corrupt(format!(
                    "the aggregate of round {k} is missing or not {d}-dimensional"
                ))
            })?
    };
    let records = store.list_rounds(id)?;
    let mut aggregated_in = HashMap::new();
    for r in &records {
        for p in &r.participants {
            aggregated_in.insert(p.clone(), r.round);
        }
    }
    let last_round = records.iter().find(|r| r.round == k);
    let (t_last, paid) = match last_round.and_then(|r| r.bandit.as_ref()) {
        Some(b) => (
            b.step,
            b.reports
                .iter()
                .map(|c| (c.client_id.clone(), c.payment))
                .collect(),
        ),
        None if k == 0 => (0, HashMap::new()),
        None => return Err(corrupt(format!("round {k} has no bandit record"))),
    };
    let last = store.last_bandit_step(id)?;
    let step = last.as_ref().map_or(0, |l| l.step);
    let synced: HashMap<String, u64> = store.list_bandit_synced(id)?.into_iter().collect();
    let skipped = count_skipped(fed, last_round, t_last, step)?;
    let mut run = Run {
        step,
        last,
        t_last,
        rounds: k,
        aggregate: Arc::new(aggregate),
        open: None,
        sync_deadline: None,
        synced,
        aggregated_in,
        paid,
        skipped,
        play_deadline: None,
    };
    if k > 0 && step == t_last && client_ids(st).iter().any(|c| run.synced(c) < k) {
        run.sync_deadline = Some(Instant::now() + timeout(fed));
    }
    if st.record.status == FederationStatus::Waiting {
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Running;
        store.put_federation(&rec)?;
        st.record = rec;
    }
    tracing::info!(federation = %id, step, rounds = k, skipped, clients = st.clients.len(), "bandit run started");
    st.bandit.run = Some(run);
    Ok(())
}

/// Opens round `rounds + 1` for the last (triggered) step in its report phase, with the
/// reports and uploads stored before a restart; returns its number.
fn open_round(fed: &Federation, run: &mut Run, clients: &[String]) -> ServiceResult<u64> {
    let d = fed.config().bandit.map_or(0, |b| b.dim as usize);
    let (store, id) = (fed.store(), fed.id());
    let round = run.rounds + 1;
    let (step, trigger_client, claimed_statistic) = run
        .last
        .as_ref()
        .map(|l| (l.step, l.client_id.clone(), l.trigger_statistic))
        .unwrap_or_default();
    let known = |c: &String| clients.contains(c);
    let reports: BTreeMap<_, _> = store
        .list_bandit_reports(id, round)?
        .into_iter()
        .filter(|(c, r)| known(c) && r.gram_update.len() == d * d)
        .map(|(c, r)| (c, Arc::new(r)))
        .collect();
    let uploads: BTreeMap<_, _> = store
        .list_bandit_uploads(id, round)?
        .into_iter()
        .filter(|(c, b)| known(c) && b.len() == d)
        .map(|(c, b)| (c, Arc::new(b)))
        .collect();
    tracing::info!(federation = %id, round, step, trigger = %trigger_client, restored = reports.len(), "communication round opened");
    run.open = Some(CommRound {
        round,
        step,
        trigger_client,
        claimed_statistic,
        phase: Phase::Report,
        deadline: Instant::now() + timeout(fed),
        reports,
        uploads,
        settlement: None,
    });
    Ok(round)
}

/// Closes the report phase: verifies the trigger, selects and prices the reporters on the
/// blocking pool ([`settle`]), then opens the upload phase (which a void round, having
/// selected nobody, leaves at once). The settlement is a pure function of stored inputs, so
/// it cannot fail in a way a retry would cure: a failure, even a panic of the selection
/// task, makes the round void rather than retried.
async fn settle_round(fed: &Arc<Federation>, settings: BanditSettings) -> ServiceResult<()> {
    let (round, aggregate, reports, trigger) = {
        let mut st = fed.state.lock().await;
        let order = client_ids(&st);
        let Some(run) = st.bandit.run.as_mut() else {
            return Ok(());
        };
        let (aggregate, rounds, t_last) = (run.aggregate.clone(), run.rounds, run.t_last);
        let Some(r) = run
            .open
            .as_mut()
            .filter(|r| matches!(r.phase, Phase::Report | Phase::Settling))
        else {
            return Ok(());
        };
        r.phase = Phase::Settling;
        // Every step needs the latest aggregate downloaded first (`take_played_step`), so
        // the trigger client's LinUCB base is the aggregate of round `rounds`.
        let synced = run.synced.get(&r.trigger_client).copied().unwrap_or(0);
        let trigger = Trigger {
            client_id: r.trigger_client.clone(),
            step: r.step,
            t_last,
            claimed: r.claimed_statistic,
            downloaded: (synced == rounds).then(|| aggregate.clone()),
        };
        let reports: Vec<_> = order
            .iter()
            .filter_map(|c| r.reports.get(c).map(|rep| (c.clone(), rep.clone())))
            .collect();
        (r.round, aggregate, reports, trigger)
    };
    // Late reports are refused from now on; tell the waiting clients.
    fed.notify();
    let reporters = reports.len();
    let reports2 = reports.clone();
    let task =
        tokio::task::spawn_blocking(move || settle(&settings, &aggregate, &reports2, &trigger));
    let settlement = match task.await {
        Ok(settlement) => settlement,
        Err(e) if e.is_panic() => Settlement::void(
            &reports,
            None,
            format!("selecting the participants failed: the selection task panicked: {e}"),
        ),
        Err(e) => {
            return Err(ServiceError::Internal(format!(
                "round {round} selection task failed: {e}"
            )));
        }
    };
    let mut st = fed.state.lock().await;
    let Some(r) = st
        .bandit
        .run
        .as_mut()
        .and_then(|run| run.open.as_mut())
        .filter(|r| r.round == round && r.phase == Phase::Settling)
    else {
        return Ok(());
    };
    match &settlement.void_reason {
        None => {
            tracing::info!(federation = %fed.id(), round, reporters, selected = ?settlement.selected, trigger_statistic = ?settlement.trigger_statistic, "participants selected")
        }
        Some(reason) => {
            tracing::warn!(federation = %fed.id(), round, reporters, %reason, "communication round void")
        }
    }
    r.settlement = Some(Arc::new(settlement));
    r.phase = Phase::Upload;
    r.deadline = Instant::now() + timeout(fed);
    drop(st);
    fed.notify();
    Ok(())
}

/// Commits the open round after its upload phase (module docs of `bandit`), then opens
/// its sync phase and announces the round and its payments.
async fn commit(fed: &Arc<Federation>, settings: &BanditSettings) -> ServiceResult<()> {
    let mut st = fed.state.lock().await;
    if st.record.status != FederationStatus::Running {
        return Ok(());
    }
    let clients = client_ids(&st);
    let mut fed_rec = st.record.clone();
    let Some(run) = st.bandit.run.as_mut() else {
        return Ok(());
    };
    let Some(r) = run.open.as_mut() else {
        return Ok(());
    };
    let Some(settlement) = r.settlement.clone() else {
        return Err(ServiceError::Internal(format!(
            "round {} reached its upload phase without a selection",
            r.round
        )));
    };
    r.phase = Phase::Committing;
    let round = r.round;
    let conclusion = conclude(
        &Closing {
            federation: fed.id(),
            round,
            step: r.step,
            trigger_client: &r.trigger_client,
            clients: &clients,
            reports: &r.reports,
            uploads: &r.uploads,
            settlement: &settlement,
            aggregate: &run.aggregate,
            now_ms: now_ms(),
            skipped_steps: run.skipped,
        },
        settings,
    );
    fed_rec.committed_rounds = round;
    let (store, id) = (fed.store().clone(), fed.id().to_string());
    let (record, stored, ledger, fed2) = (
        conclusion.record.clone(),
        conclusion.aggregate.to_stored(),
        conclusion.ledger.clone(),
        fed_rec.clone(),
    );
    let committed = tokio::task::spawn_blocking(move || {
        store.commit_bandit_round(&id, &record, &stored, &ledger, &fed2)
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("round {round} commit task failed: {e}")))?;
    let conclusion = match committed {
        Ok(()) => conclusion,
        // The commit reached the disk although it reported failure: adopt it.
        Err(StoreError::Conflict { .. }) => {
            fed_rec = fed.store().get_federation(fed.id())?.ok_or_else(|| {
                ServiceError::Internal(format!("federation `{}` vanished from the store", fed.id()))
            })?;
            stored_conclusion(fed, settings, round)?
        }
        Err(e) => return Err(e.into()),
    };
    let Conclusion {
        record,
        aggregate,
        ledger,
    } = conclusion;
    run.rounds = round;
    run.t_last = record.bandit.as_ref().map_or(run.step, |b| b.step);
    run.aggregate = Arc::new(aggregate);
    run.open = None;
    run.sync_deadline = Some(Instant::now() + timeout(fed));
    for p in &record.participants {
        run.aggregated_in.insert(p.clone(), round);
    }
    run.paid = record
        .bandit
        .iter()
        .flat_map(|b| &b.reports)
        .map(|c| (c.client_id.clone(), c.payment))
        .collect();
    st.record = fed_rec;
    drop(st);
    tracing::info!(federation = %fed.id(), round, participants = ?record.participants, payments = ledger.len(), "communication round committed");
    fed.emit_committed(record, ledger);
    fed.notify();
    Ok(())
}

/// A committed round as stored: its record, the aggregate after it and its payments.
fn stored_conclusion(
    fed: &Federation,
    settings: &BanditSettings,
    round: u64,
) -> ServiceResult<Conclusion> {
    let (store, id) = (fed.store(), fed.id());
    let missing = |what: &str| {
        ServiceError::Internal(format!(
            "federation `{id}`: round {round} is committed but its {what} is missing"
        ))
    };
    let record: RoundRecord = store
        .get_round(id, round)?
        .ok_or_else(|| missing("record"))?;
    let aggregate = store
        .get_bandit_aggregate(id)?
        .and_then(|v| Aggregate::from_stored(settings.dim as usize, v))
        .ok_or_else(|| missing("aggregate"))?;
    let ledger = store.list_round_ledger(id, round)?;
    Ok(Conclusion {
        record,
        aggregate,
        ledger,
    })
}
