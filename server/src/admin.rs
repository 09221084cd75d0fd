//! The operator-facing `fedval.v1.Admin` gRPC service.
//!
//! Every call is checked against the admin token by `admin_interceptor` before it
//! reaches a handler. Handlers convert between the wire types and the domain.

use std::pin::Pin;
use std::sync::Arc;

use fedval_proto::v1 as pb;
use fedval_proto::v1::admin_server::Admin;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::auth::{self, AdminToken};
use crate::config::FederationConfig;
use crate::convert::config_summary_proto;
use crate::error::ServiceError;
use crate::federation::{Event, Federation};
use crate::registry::Registry;
use crate::store::{FederationStatus, LedgerEntry, RoundRecord, Totals};

/// Implementation of the Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    registry: Arc<Registry>,
}

impl AdminService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        AdminService { registry }
    }
}

/// Rejects Admin calls that do not carry the admin token.
pub fn admin_interceptor(
    token: Arc<AdminToken>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let given = auth::bearer_from_metadata(request.metadata()).map_err(ServiceError::from)?;
        if token.verify(given) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid admin token"))
        }
    }
}

async fn federation_info(fed: &Federation) -> pb::FederationInfo {
    let (record, clients) = fed.snapshot().await;
    pb::FederationInfo {
        config: Some(config_summary_proto(&record.config)),
        status: record.status.as_str().to_string(),
        last_error: fed.loop_error().await.unwrap_or_default(),
        valued_rounds: record
            .committed_rounds
            .saturating_sub(fed.pending_valuations().await),
        committed_rounds: record.committed_rounds,
        model_version: record.model_version,
        clients: clients
            .into_iter()
            .map(|c| pb::ClientInfo {
                client_id: c.client_id,
                name: c.name,
                num_samples: c.num_samples,
            })
            .collect(),
    }
}

fn metrics_to_proto(metrics: &[(String, f64)]) -> Vec<pb::Metric> {
    metrics
        .iter()
        .map(|(name, value)| pb::Metric {
            name: name.clone(),
            value: *value,
        })
        .collect()
}

/// A committed round on the wire.
pub fn round_to_proto(r: &RoundRecord) -> pb::RoundRecord {
    pb::RoundRecord {
        round: r.round,
        model_version: r.model_version,
        participants: r.participants.clone(),
        stragglers: r.stragglers.clone(),
        metrics: metrics_to_proto(&r.metrics),
        values: r
            .values
            .iter()
            .map(|v| pb::ClientValue {
                client_id: v.client_id.clone(),
                value: v.value,
                std_error: v.std_error,
            })
            .collect(),
        valuation_method: r.valuation_method.clone(),
        evaluations: r.evaluations,
        utility_full: r.utility_full,
        utility_empty: r.utility_empty,
        valuation_ms: r.valuation_ms,
        valuation_status: r.valuation_status.describe(),
        valuation_stop: r.valuation_stop.clone(),
        bandit: r.bandit.as_ref().map(|b| pb::BanditRound {
            step: b.step,
            trigger_client: b.trigger_client.clone(),
            selected: b.selected.clone(),
            value: b.value,
            target: b.target,
            reports: b
                .reports
                .iter()
                .map(|c| pb::ClientBanditReport {
                    client_id: c.client_id.clone(),
                    reported_cost: c.reported_cost,
                    selected: c.selected,
                    payment: c.payment,
                    capped: c.capped,
                    gain: c.gain,
                })
                .collect(),
            trigger_statistic: b.trigger_statistic,
            void_reason: b.void_reason.clone().unwrap_or_default(),
        }),
        reputations: r
            .reputations
            .iter()
            .map(|c| pb::ClientReputation {
                client_id: c.client_id.clone(),
                reputation: c.reputation,
                phi: c.phi,
                removed: c.removed,
            })
            .collect(),
        reputation_threshold: r.reputation_threshold,
        fair_reward: r.fair_reward.as_ref().map(|f| pb::FairRewardRound {
            exploring: f.exploring,
            p_value: f.p_value,
            clients: f
                .clients
                .iter()
                .map(|c| pb::ClientFairReward {
                    client_id: c.client_id.clone(),
                    psi: c.psi,
                    received_model: c.received_model,
                    probability: c.probability,
                })
                .collect(),
        }),
    }
}

/// A ledger entry on the wire.
fn ledger_entry_to_proto(e: &LedgerEntry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        round: e.round,
        client_id: e.client_id.clone(),
        kind: e.kind.as_str().to_string(),
        amount: e.amount,
        mechanism: e.mechanism.clone(),
        inputs: e.inputs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        recorded_at_ms: e.recorded_at_ms,
    }
}

/// A client's ledger totals on the wire.
fn ledger_totals_to_proto(client_id: &str, t: &Totals) -> pb::LedgerTotals {
    pb::LedgerTotals {
        client_id: client_id.to_string(),
        payments: t.payments,
        penalties: t.penalties,
        prizes: t.prizes,
        net: t.net,
    }
}

fn event_to_proto(event: Event) -> pb::FederationEvent {
    use pb::federation_event::Kind;
    let kind = match event {
        Event::RoundStarted { round, selected } => {
            Kind::RoundStarted(pb::RoundStarted { round, selected })
        }
        Event::RoundCommitted(r) => Kind::RoundCommitted(round_to_proto(&r)),
        Event::RoundValued(r) => Kind::RoundValued(round_to_proto(&r)),
        Event::LedgerRecorded { round, entries } => Kind::LedgerRecorded(pb::LedgerRecorded {
            round,
            entries: entries.iter().map(ledger_entry_to_proto).collect(),
        }),
        Event::Ended {
            status,
            committed_rounds,
        } => Kind::Ended(pb::FederationEnded {
            status: status.as_str().to_string(),
            committed_rounds,
        }),
    };
    pb::FederationEvent { kind: Some(kind) }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::FederationEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_federation(
        &self,
        request: Request<pb::CreateFederationRequest>,
    ) -> Result<Response<pb::FederationInfo>, Status> {
        let wire = request.into_inner().config.ok_or_else(|| {
            ServiceError::InvalidArgument(
                "invalid federation config: field `config`: missing".into(),
            )
        })?;
        let config = FederationConfig::try_from(wire).map_err(ServiceError::from)?;
        config.validate().map_err(ServiceError::from)?;
        let registry = self.registry.clone();
        let fed = registry.create(config)?;
        Ok(Response::new(federation_info(&fed).await))
    }

    async fn list_federations(
        &self,
        _request: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        let mut federations = Vec::new();
        for fed in self.registry.list() {
            federations.push(federation_info(&fed).await);
        }
        Ok(Response::new(pb::ListFederationsResponse { federations }))
    }

    async fn get_federation(
        &self,
        request: Request<pb::GetFederationRequest>,
    ) -> Result<Response<pb::FederationInfo>, Status> {
        let fed = self.registry.get(&request.get_ref().federation_id)?;
        Ok(Response::new(federation_info(&fed).await))
    }

    async fn stop_federation(
        &self,
        request: Request<pb::StopFederationRequest>,
    ) -> Result<Response<pb::FederationInfo>, Status> {
        let fed = self.registry.get(&request.get_ref().federation_id)?;
        fed.stop().await?;
        Ok(Response::new(federation_info(&fed).await))
    }

    async fn list_rounds(
        &self,
        request: Request<pb::ListRoundsRequest>,
    ) -> Result<Response<pb::ListRoundsResponse>, Status> {
        let fed = self.registry.get(&request.get_ref().federation_id)?;
        let rounds = fed
            .store()
            .list_rounds(fed.id())
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListRoundsResponse {
            rounds: rounds.iter().map(round_to_proto).collect(),
        }))
    }

    async fn get_contributions(
        &self,
        request: Request<pb::GetContributionsRequest>,
    ) -> Result<Response<pb::GetContributionsResponse>, Status> {
        let fed = self.registry.get(&request.get_ref().federation_id)?;
        let rounds = fed
            .store()
            .list_rounds(fed.id())
            .map_err(ServiceError::from)?;
        let (_, clients) = fed.snapshot().await;
        let contributions = clients
            .into_iter()
            .map(|c| {
                let mut cumulative_value = 0.0;
                let mut rounds_participated = 0;
                for r in &rounds {
                    if r.participants.contains(&c.client_id) {
                        rounds_participated += 1;
                    }
                    cumulative_value += r
                        .values
                        .iter()
                        .filter(|v| v.client_id == c.client_id)
                        .map(|v| v.value)
                        .sum::<f64>();
                }
                pb::ClientContribution {
                    client_id: c.client_id,
                    name: c.name,
                    cumulative_value,
                    rounds_participated,
                }
            })
            .collect();
        Ok(Response::new(pb::GetContributionsResponse {
            contributions,
        }))
    }

    async fn list_ledger(
        &self,
        request: Request<pb::ListLedgerRequest>,
    ) -> Result<Response<pb::ListLedgerResponse>, Status> {
        let request = request.into_inner();
        if request.federation_id.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "field `federation_id`: missing (an empty id names no federation)".into(),
            )
            .into());
        }
        if request.client_id.as_deref() == Some("") {
            return Err(ServiceError::InvalidArgument(
                "field `client_id`: empty; leave it unset to list every client".into(),
            )
            .into());
        }
        let fed = self.registry.get(&request.federation_id)?;
        let mut entries = fed
            .store()
            .list_ledger(fed.id())
            .map_err(ServiceError::from)?;
        if let Some(client) = &request.client_id {
            entries.retain(|e| &e.client_id == client);
        }
        let totals = crate::store::ledger::totals(&entries);
        Ok(Response::new(pb::ListLedgerResponse {
            entries: entries.iter().map(ledger_entry_to_proto).collect(),
            totals: totals
                .iter()
                .map(|(client, t)| ledger_totals_to_proto(client, t))
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let fed = self.registry.get(&request.get_ref().federation_id)?;
        // Subscribe before reading the status, so no event falls between the two.
        let mut events = fed.subscribe_events();
        let (record, _) = fed.snapshot().await;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        if matches!(
            record.status,
            FederationStatus::Finished | FederationStatus::Stopped
        ) {
            let ended = Event::Ended {
                status: record.status,
                committed_rounds: record.committed_rounds,
            };
            let _ = tx.send(Ok(event_to_proto(ended))).await;
        } else {
            tokio::spawn(async move {
                loop {
                    // Stop as soon as the watcher hangs up, not at the next event (which
                    // may never come): each watcher holds a task and a subscription.
                    let received = tokio::select! {
                        r = events.recv() => r,
                        _ = tx.closed() => return,
                    };
                    match received {
                        Ok(event) => {
                            let last = matches!(event, Event::Ended { .. });
                            if tx.send(Ok(event_to_proto(event))).await.is_err() || last {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(skipped)) => {
                            tracing::warn!(skipped, "event watcher lagged; events skipped");
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
