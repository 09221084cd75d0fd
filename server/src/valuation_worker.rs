//! Values committed rounds, oldest first, behind the round loop.
//!
//! Training never waits for a valuation longer than `valuation.max_lag_rounds` rounds
//! (the round loop holds the next round back beyond that), and a federation is
//! `finished` only once every round is valued. Each round's record is completed and
//! rewritten durably (`Store::update_round`); until then it reads `pending`. After a
//! restart, the rounds still pending are valued again from the stored updates and
//! models. A failing store write is retried with back-off; an estimator failure is
//! recorded in the round (`failed: <reason>`), never retried forever.

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{ServiceError, ServiceResult};
use crate::federation::{AcceptedUpdate, Event, Federation, ValuationJob};
use crate::round_loop::retry_delay;
use crate::round_value::value_round;
use crate::store::{RoundRecord, StoreError, ValuationStatus};

/// Values `fed`'s pending rounds until `shutdown` turns true.
pub(crate) async fn run(fed: Arc<Federation>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = fed.subscribe_changes();
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let next = {
            let st = fed.state.lock().await;
            st.pending_valuation
                .iter()
                .next()
                .map(|(&round, job)| (round, job.clone()))
        };
        let Some((round, job)) = next else {
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        match value_one(&fed, round, job).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                tracing::error!(federation = %fed.id(), round, error = %e, ?delay, "recording a valuation failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Values round `round` (from `job`, or from the store when the inputs are not in
/// memory), records it durably, and takes it off the pending list.
///
/// Only a failing store write or read is returned as an error (and retried): inputs
/// that are gone from the store, or an estimator that panics, are recorded as the
/// round's `failed: <reason>`, since retrying them could never succeed and would keep
/// the federation from finishing.
async fn value_one(
    fed: &Arc<Federation>,
    round: u64,
    job: Option<ValuationJob>,
) -> ServiceResult<()> {
    let job = match job {
        Some(job) => Ok(job),
        None => {
            let fed2 = fed.clone();
            tokio::task::spawn_blocking(move || load_job(&fed2, round))
                .await
                .map_err(|e| ServiceError::Internal(format!("loading round {round}: {e}")))?
        }
    };
    let record = match job {
        Ok(job) => {
            let mut failed = job.record.clone();
            let fed2 = fed.clone();
            let valued = tokio::task::spawn_blocking(move || {
                let mut record = job.record;
                value_round(
                    fed2.config(),
                    fed2.validation().map(|v| v.as_ref()),
                    &job.global,
                    &job.updates,
                    &mut record,
                );
                record
            })
            .await;
            match valued {
                Ok(record) => record,
                Err(e) => {
                    failed.valuation_status =
                        ValuationStatus::Failed(format!("the valuation task failed: {e}"));
                    failed
                }
            }
        }
        Err(LoadFailure::Store(e)) => return Err(e),
        Err(LoadFailure::Unvaluable { mut record, reason }) => {
            tracing::error!(federation = %fed.id(), round, %reason, "round cannot be valued");
            record.valuation_status = ValuationStatus::Failed(reason);
            *record
        }
        Err(LoadFailure::NoRecord(reason)) => {
            // Nothing to rewrite: drop it rather than hold the federation forever.
            tracing::error!(federation = %fed.id(), round, %reason, "pending round dropped");
            fed.state.lock().await.pending_valuation.remove(&round);
            fed.notify();
            return Ok(());
        }
    };
    let store = fed.store().clone();
    let (id, record2) = (fed.id().to_string(), record.clone());
    tokio::task::spawn_blocking(move || store.update_round(&id, &record2))
        .await
        .map_err(|e| ServiceError::Internal(format!("recording round {round}: {e}")))??;
    tracing::info!(
        federation = %fed.id(),
        round,
        method = %record.valuation_method,
        evaluations = record.evaluations,
        ms = record.valuation_ms,
        status = %record.valuation_status.describe(),
        "round valued"
    );
    {
        // Emitted under the lock, before the round leaves the pending list: the round
        // loop (which finishes the federation once that list is empty) cannot emit
        // `Ended` ahead of this round's `RoundValued`.
        let mut st = fed.state.lock().await;
        fed.emit(Event::RoundValued(Box::new(record)));
        st.pending_valuation.remove(&round);
    }
    fed.notify();
    Ok(())
}

/// Why a pending round's inputs could not be loaded.
#[derive(Debug)]
enum LoadFailure {
    /// The store failed to answer: worth retrying.
    Store(ServiceError),
    /// The record is there but the inputs are gone or corrupt: record the round as failed.
    Unvaluable {
        record: Box<RoundRecord>,
        reason: String,
    },
    /// The round's record itself is missing or unreadable.
    NoRecord(String),
}

impl From<StoreError> for LoadFailure {
    fn from(e: StoreError) -> Self {
        LoadFailure::Store(e.into())
    }
}

/// Whether `e` can go away by itself (a backend failure), unlike a corrupt record.
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend { .. })
}

/// Rebuilds a pending round's inputs from the store: its record, its accepted updates
/// and the model it started from.
fn load_job(fed: &Federation, round: u64) -> Result<ValuationJob, LoadFailure> {
    let store = fed.store();
    let record = match store.list_rounds(fed.id()) {
        Ok(rounds) => rounds.into_iter().find(|r| r.round == round),
        Err(e) if transient(&e) => return Err(e.into()),
        Err(e) => return Err(LoadFailure::NoRecord(e.to_string())),
    }
    .ok_or_else(|| LoadFailure::NoRecord(format!("round {round} is pending but not stored")))?;
    let unvaluable = |record: &RoundRecord, reason: String| LoadFailure::Unvaluable {
        record: Box::new(record.clone()),
        reason,
    };
    let start_version = record.model_version.saturating_sub(1);
    let global = match store.get_model(fed.id(), start_version) {
        Ok(Some(global)) => global,
        Ok(None) => {
            let reason = format!("model version {start_version} of round {round} is not stored");
            return Err(unvaluable(&record, reason));
        }
        Err(e) if transient(&e) => return Err(e.into()),
        Err(e) => return Err(unvaluable(&record, e.to_string())),
    };
    let stored = match store.list_updates(fed.id(), round) {
        Ok(stored) => stored,
        Err(e) if transient(&e) => return Err(e.into()),
        Err(e) => return Err(unvaluable(&record, e.to_string())),
    };
    let updates: Vec<AcceptedUpdate> = stored
        .into_iter()
        .filter(|(u, _)| record.participants.contains(&u.client_id))
        .map(|(record, delta)| AcceptedUpdate {
            record,
            delta: Arc::new(delta),
        })
        .collect();
    // Valuing a subset of the participants would be a different game: refuse it.
    let missing: Vec<&String> = record
        .participants
        .iter()
        .filter(|p| !updates.iter().any(|u| &u.record.client_id == *p))
        .collect();
    if !missing.is_empty() {
        let reason = format!("round {round}: the updates of {missing:?} are not stored");
        return Err(unvaluable(&record, reason));
    }
    Ok(ValuationJob {
        record,
        global: Arc::new(global),
        updates,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::federation::tests::config;
    use crate::store::{FederationStatus, Store};

    /// A stored federation whose round 1 is committed and pending valuation, but whose
    /// update is missing from the store (as after a restart on a damaged store).
    async fn restored_with_a_lost_update() -> (Arc<Federation>, RoundRecord) {
        let store = Store::memory();
        let fed = Federation::create(config(1), store.clone()).expect("created");
        let (client, _) = fed
            .enroll("s", "alice", 10, 0, 0.0)
            .await
            .expect("enrolled");
        let mut fed_rec = fed.snapshot().await.0;
        fed_rec.status = FederationStatus::Running;
        fed_rec.committed_rounds = 1;
        fed_rec.model_version = 1;
        let record = RoundRecord {
            round: 1,
            model_version: 1,
            participants: vec![client],
            stragglers: Vec::new(),
            metrics: vec![("val_accuracy".into(), 0.5)],
            values: Vec::new(),
            valuation_method: String::new(),
            evaluations: 0,
            utility_full: f64::NAN,
            utility_empty: f64::NAN,
            valuation_ms: 0,
            valuation_status: ValuationStatus::Pending,
            valuation_stop: String::new(),
            reputations: Vec::new(),
            reputation_threshold: None,
            fair_reward: None,
            bandit: None,
        };
        store
            .commit_round("unit", &record, &[0.0; 9], &[], &[], &fed_rec)
            .expect("committed");
        let stored = store.get_federation("unit").expect("read").expect("exists");
        let fed = Federation::restore(stored, store).expect("restored");
        assert_eq!(fed.pending_valuations().await, 1);
        (fed, record)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_round_whose_updates_are_gone_fails_and_the_federation_finishes() {
        let (fed, committed) = restored_with_a_lost_update().await;
        let mut events = fed.subscribe_events();
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = tokio::spawn(run(fed.clone(), stop_rx.clone()));
        let round_loop = tokio::spawn(crate::round_loop::run(fed.clone(), stop_rx));
        let mut seen = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await.expect("channel open") {
                    Event::RoundValued(r) => seen.push(*r),
                    Event::Ended { status, .. } => return status,
                    _ => {}
                }
            }
        })
        .await
        .expect("the federation ends instead of hanging");
        assert_eq!(ended, FederationStatus::Finished);
        assert_eq!(seen.len(), 1, "RoundValued precedes Ended, once");
        let stored = fed.store().list_rounds("unit").expect("rounds");
        assert_eq!(stored.len(), 1);
        let round = &stored[0];
        match &round.valuation_status {
            ValuationStatus::Failed(reason) => assert!(reason.contains("not stored"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        // The training fields of the committed record survive the rewrite.
        assert_eq!(
            (&round.participants, &round.metrics, round.model_version),
            (&committed.participants, &committed.metrics, 1)
        );
        assert_eq!(seen[0].valuation_status, round.valuation_status);
        assert_eq!(fed.pending_valuations().await, 0);
        let _ = stop_tx.send(true);
        worker.await.expect("worker ends");
        round_loop.await.expect("loop ends");
    }
}
