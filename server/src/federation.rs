//! One federation: its configuration, enrolled clients, global model and open round.
//!
//! A [`Federation`] is shared by the gRPC handlers (enroll, pull a task, download the
//! model, upload an update) and by its round loop (`round_loop`), which alone opens,
//! closes and commits rounds. All mutable state sits behind one async mutex; every
//! change bumps a `watch` epoch so long-polling clients and the round loop wake up.
//!
//! **Invariant:** an update is acknowledged only after `Store::put_update` returned,
//! i.e. once it is durable; a round's results, its new model and the federation's
//! progress are committed in one atomic batch. Making an update durable and recording
//! it in the open round happen on their own task, so a client that disconnects mid-way
//! cannot leave an update on disk that the round does not know about.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fedval_core::data::Dataset;
use fedval_core::tensor;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, broadcast, watch};
use tokio::time::Instant;

use crate::auth;
use crate::config::{FederationConfig, MAX_FAIR_REWARD_CLIENTS};
use crate::error::{ServiceError, ServiceResult};
use crate::store::{
    ClientRecord, FederationRecord, FederationStatus, LedgerEntry, RoundRecord, Store,
    UpdateRecord, ValuationStatus,
};

/// Longest client name accepted at enrollment.
const MAX_NAME_LEN: usize = 64;
/// Most metrics an upload may carry, and the longest metric name.
const MAX_METRICS: usize = 64;
const MAX_METRIC_NAME: usize = 64;
/// Largest sample count a client may claim (it weighs FedAvg, so it is bounded).
pub(crate) const MAX_NUM_SAMPLES: u64 = 1 << 40;
/// Most clients one federation enrolls (each costs a store record and memory).
pub const MAX_CLIENTS: usize = 100_000;

/// A global model version, kept encoded so downloads are zero-copy slices.
#[derive(Debug)]
pub struct GlobalModel {
    /// Model version (number of committed rounds that produced it).
    pub version: u64,
    /// The parameters.
    pub params: Arc<Vec<f32>>,
    /// The parameters as little-endian f32 bytes.
    pub bytes: Bytes,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
}

impl GlobalModel {
    /// Wraps parameters of `version`, encoding them once.
    pub fn new(version: u64, params: Vec<f32>) -> Self {
        let bytes = Bytes::from(tensor::to_le_bytes(&params));
        let sha256 = tensor::sha256_hex(&bytes);
        GlobalModel {
            version,
            params: Arc::new(params),
            bytes,
            sha256,
        }
    }

    /// The same parameters as model `version`, sharing the encoded bytes (a client that
    /// keeps its own model across a round).
    pub fn at_version(&self, version: u64) -> Self {
        GlobalModel {
            version,
            params: self.params.clone(),
            bytes: self.bytes.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

/// An update the server has made durable and acknowledged.
#[derive(Clone, Debug)]
pub struct AcceptedUpdate {
    /// Its metadata, as stored.
    pub record: UpdateRecord,
    /// The update (client parameters minus the global parameters it started from).
    pub delta: Arc<Vec<f32>>,
}

/// What a client should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum NextTask {
    /// Train round `round` from `model_version`; `deadline` is when the round closes.
    Train {
        round: u64,
        model_version: u64,
        deadline_ms: u64,
        /// FACT federations: the client's required contribution `m*` (0 otherwise).
        required_points: f64,
    },
    /// Nothing to do yet.
    Wait { reason: String },
    /// The federation has ended.
    Done {
        final_model_version: u64,
        reason: String,
    },
    /// RFFL removed this client in `round`; it takes no further part.
    Removed { round: u64, reason: String },
    /// Vertical federations: embed `sample_ids` and exchange the embeddings for round
    /// `round` (`evaluate_only`: the evaluation pass, no gradients come back).
    Embed {
        round: u64,
        sample_ids: Arc<Vec<u32>>,
        evaluate_only: bool,
        deadline_ms: u64,
    },
    /// Bandit federations: play a step, report, upload or download (see `bandit`).
    Bandit(crate::bandit::BanditTask),
}

/// What an upload header claims, before its data arrives.
#[derive(Clone, Debug)]
pub struct UploadClaim {
    /// The round the update is for.
    pub round: u64,
    /// The global model version it was trained from.
    pub model_version: u64,
    /// Local samples it was trained on (its FedAvg weight).
    pub num_samples: u64,
    /// Local metrics, by name.
    pub metrics: Vec<(String, f64)>,
    /// Size of the tensor in bytes.
    pub total_bytes: u64,
    /// Lower-case hex SHA-256 of the tensor bytes.
    pub sha256: String,
}

/// An upload header the open round admits: how many bytes to receive, and by when.
#[derive(Clone, Copy, Debug)]
pub struct AdmittedClaim {
    /// Bytes the tensor must have.
    pub expected_bytes: usize,
    /// When the round closes: data still arriving then is refused.
    pub deadline: Instant,
}

/// Proof that one upload of a client is in progress; at most one exists per client, so
/// a client cannot make the server hold many model-sized buffers at once. Dropping it
/// (the upload finished, failed or was cancelled) frees the client's slot.
#[derive(Debug)]
pub struct UploadSlot {
    fed: Arc<Federation>,
    client_id: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.fed.uploading().remove(&self.client_id);
    }
}

/// Round-level events, fanned out to Admin watchers.
#[derive(Clone, Debug)]
pub enum Event {
    /// A round opened with these selected clients.
    RoundStarted { round: u64, selected: Vec<String> },
    /// A round was committed.
    RoundCommitted(Box<RoundRecord>),
    /// A committed round's valuation was recorded (done, skipped or failed).
    RoundValued(Box<RoundRecord>),
    /// Payments, penalties or prizes of `round` were newly written to the ledger (a
    /// replay that writes nothing emits nothing).
    LedgerRecorded {
        round: u64,
        entries: Vec<LedgerEntry>,
    },
    /// The federation finished or was stopped.
    Ended {
        status: FederationStatus,
        committed_rounds: u64,
    },
}

/// The round currently collecting updates.
#[derive(Debug)]
pub(crate) struct OpenRound {
    pub number: u64,
    pub selected: BTreeSet<String>,
    pub received: BTreeMap<String, AcceptedUpdate>,
    pub deadline: Instant,
    pub deadline_wall_ms: u64,
    /// Set when the round loop starts closing it: later uploads are refused.
    pub closed: bool,
}

#[derive(Debug)]
pub(crate) struct FedState {
    pub record: FederationRecord,
    pub clients: Vec<ClientRecord>,
    pub by_id: HashMap<String, usize>,
    pub model: Arc<GlobalModel>,
    /// Reward-policy federations only (RFFL, fair reward): each client's own model, at
    /// the version of `model`.
    pub personal: HashMap<String, Arc<GlobalModel>>,
    pub round: Option<OpenRound>,
    /// The round loop's last failure while it retries; `None` when it is healthy.
    pub loop_error: Option<String>,
    /// Committed rounds whose valuation is not recorded yet, oldest first, with their
    /// inputs when still in memory (`None` after a restart: the worker reloads them).
    pub pending_valuation: BTreeMap<u64, Option<ValuationJob>>,
    /// Vertical federations: the open pass and the answers of closed ones (unused in a
    /// horizontal federation).
    pub vertical: crate::vertical::VerticalState,
    /// Bandit federations: the run (unused otherwise).
    pub bandit: crate::bandit::BanditState,
}

impl FedState {
    /// The (1-based) round in which RFFL removed `client_id`, `None` if it was not
    /// removed (or the federation does not use reputations). Every committed round is
    /// one RFFL step, so RFFL's 0-based round `t` is the federation's round `t + 1`.
    pub(crate) fn removed_in(&self, client_id: &str) -> Option<u64> {
        let state = self.record.rffl.as_ref()?;
        let &index = self.by_id.get(client_id)?;
        let rffl_round = state.removed_at.get(index).copied().flatten()?;
        Some(rffl_round.saturating_add(1))
    }
}

impl FedState {
    /// Every client's own model of the new `version` after a round of a reward policy:
    /// `updated` clients get theirs (already at `version`), every other client keeps its
    /// current model (or `initial`, if it has none yet), re-versioned without a copy.
    pub(crate) fn next_personal(
        &self,
        mut updated: BTreeMap<String, Arc<GlobalModel>>,
        initial: &GlobalModel,
        version: u64,
    ) -> Vec<(String, Arc<GlobalModel>)> {
        self.clients
            .iter()
            .map(|c| {
                let own = updated.remove(&c.client_id).unwrap_or_else(|| {
                    let current = self.personal.get(&c.client_id).map_or(initial, |m| m);
                    Arc::new(current.at_version(version))
                });
                (c.client_id.clone(), own)
            })
            .collect()
    }
}

/// Every client's own model after a restart (reward-policy federations, see
/// [`FederationConfig::personal_models`]; empty otherwise): the stored model of the
/// current version, or the initial model before the first commit.
pub(crate) fn restore_personal(
    store: &Store,
    record: &FederationRecord,
    clients: &[ClientRecord],
    model: &GlobalModel,
) -> ServiceResult<HashMap<String, Arc<GlobalModel>>> {
    let mut personal = HashMap::new();
    if !record.config.personal_models() {
        return Ok(personal);
    }
    let version = record.model_version;
    let initial = Arc::new(GlobalModel::new(version, model.params.to_vec()));
    for c in clients {
        let own = if version == 0 {
            initial.clone()
        } else {
            let params = store
                .get_client_model(&record.config.id, &c.client_id, version)?
                .ok_or_else(|| {
                    ServiceError::Internal(format!(
                        "federation `{}`: model version {version} of {} missing from the store",
                        record.config.id, c.client_id
                    ))
                })?;
            Arc::new(GlobalModel::new(version, params))
        };
        personal.insert(c.client_id.clone(), own);
    }
    Ok(personal)
}

/// What valuing a committed round needs.
#[derive(Clone, Debug)]
pub(crate) struct ValuationJob {
    /// The committed record, to be completed with the values.
    pub record: RoundRecord,
    /// The round's starting global model.
    pub global: Arc<Vec<f32>>,
    /// The round's accepted updates.
    pub updates: Vec<AcceptedUpdate>,
}

/// A federation hosted by this server.
#[derive(Debug)]
pub struct Federation {
    config: FederationConfig,
    validation: Option<Arc<Dataset>>,
    /// Vertical federations: the label holder's objective and training ids.
    vertical: Option<Arc<crate::vertical::VerticalSpec>>,
    store: Store,
    pub(crate) state: Mutex<FedState>,
    /// Clients with an upload in progress (see [`UploadSlot`]).
    uploading: std::sync::Mutex<HashSet<String>>,
    changed: watch::Sender<u64>,
    events: broadcast::Sender<Event>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Federation {
    /// Validates `config`, persists the new federation with its initial model, and returns it.
    pub fn create(config: FederationConfig, store: Store) -> ServiceResult<Arc<Self>> {
        config.validate()?;
        // A vertical federation's "model" is the server's bias, zero at first.
        let params = match (&config.vertical, &config.model) {
            (Some(v), _) => vec![0.0; v.output_dim()],
            (None, Some(model)) => model.init_params(config.seed),
            (None, None) => Vec::new(),
        };
        let record = FederationRecord {
            config: config.clone(),
            status: FederationStatus::Waiting,
            committed_rounds: 0,
            model_version: 0,
            rffl: None,
            fair_reward: None,
        };
        if store.get_federation(&config.id)?.is_some() {
            return Err(ServiceError::AlreadyExists(format!(
                "federation `{}` already exists; choose another id",
                config.id
            )));
        }
        store.create_federation(&record, &params)?;
        Self::assemble(
            record,
            Vec::new(),
            GlobalModel::new(0, params),
            store,
            BTreeMap::new(),
            HashMap::new(),
        )
    }

    /// Rebuilds a federation from the store after a restart.
    pub fn restore(record: FederationRecord, store: Store) -> ServiceResult<Arc<Self>> {
        let clients = store.list_clients(&record.config.id)?;
        let params = store
            .get_model(&record.config.id, record.model_version)?
            .ok_or_else(|| {
                ServiceError::Internal(format!(
                    "federation `{}`: model version {} missing from the store",
                    record.config.id, record.model_version
                ))
            })?;
        let model = GlobalModel::new(record.model_version, params);
        let personal = restore_personal(&store, &record, &clients, &model)?;
        // Rounds committed but not valued before the restart are valued again.
        let pending = store
            .list_rounds(&record.config.id)?
            .into_iter()
            .filter(|r| r.valuation_status == ValuationStatus::Pending)
            .map(|r| (r.round, None))
            .collect();
        Self::assemble(record, clients, model, store, pending, personal)
    }

    fn assemble(
        record: FederationRecord,
        clients: Vec<ClientRecord>,
        model: GlobalModel,
        store: Store,
        pending_valuation: BTreeMap<u64, Option<ValuationJob>>,
        personal: HashMap<String, Arc<GlobalModel>>,
    ) -> ServiceResult<Arc<Self>> {
        let config = record.config.clone();
        let validation = match (&config.validation, &config.model) {
            (Some(v), Some(model)) => Some(Arc::new(v.to_dataset(model.num_classes())?)),
            _ => None,
        };
        let vertical = config
            .vertical
            .as_ref()
            .map(|v| crate::vertical::VerticalSpec::new(v).map(Arc::new))
            .transpose()?;
        let by_id = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.client_id.clone(), i))
            .collect();
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new(Federation {
            config,
            validation,
            vertical,
            store,
            state: Mutex::new(FedState {
                record,
                clients,
                by_id,
                model: Arc::new(model),
                personal,
                round: None,
                loop_error: None,
                pending_valuation,
                vertical: Default::default(),
                bandit: Default::default(),
            }),
            uploading: std::sync::Mutex::new(HashSet::new()),
            changed,
            events,
        }))
    }

    /// The federation's configuration.
    pub fn config(&self) -> &FederationConfig {
        &self.config
    }

    /// The federation's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Vertical federations: the objective and training ids; `None` when horizontal.
    pub fn vertical(&self) -> Option<&Arc<crate::vertical::VerticalSpec>> {
        self.vertical.as_ref()
    }

    /// The server-side validation set, if configured.
    pub fn validation(&self) -> Option<&Arc<Dataset>> {
        self.validation.as_ref()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Wakes long-polling clients and the round loop.
    pub(crate) fn notify(&self) {
        self.changed
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// A receiver that changes whenever the federation's state does.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A receiver of round events.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        // No watcher is fine.
        let _ = self.events.send(event);
    }

    /// Announces committed round `record` and, if any, the ledger entries committed in
    /// the same batch (after the round, so watchers see the round first).
    pub(crate) fn emit_committed(&self, record: RoundRecord, ledger: Vec<LedgerEntry>) {
        let round = record.round;
        self.emit(Event::RoundCommitted(Box::new(record)));
        if !ledger.is_empty() {
            self.emit(Event::LedgerRecorded {
                round,
                entries: ledger,
            });
        }
    }

    /// A snapshot of the federation's record and clients.
    pub async fn snapshot(&self) -> (FederationRecord, Vec<ClientRecord>) {
        let st = self.state.lock().await;
        (st.record.clone(), st.clients.clone())
    }

    /// Committed rounds whose valuation is not recorded yet.
    pub async fn pending_valuations(&self) -> u64 {
        self.state.lock().await.pending_valuation.len() as u64
    }

    /// The round loop's last failure while it is retrying, `None` when it is healthy.
    pub async fn loop_error(&self) -> Option<String> {
        self.state.lock().await.loop_error.clone()
    }

    /// Records (or clears, with `None`) the round loop's failure and wakes long-pollers
    /// so clients learn why their round is late.
    pub(crate) async fn set_loop_error(&self, error: Option<String>) {
        let changed = {
            let mut st = self.state.lock().await;
            let changed = st.loop_error != error;
            st.loop_error = error;
            changed
        };
        if changed {
            self.notify();
        }
    }

    /// Enrolls a client with the federation's secret; returns its id and bearer token.
    /// `num_features` is a vertical party's column count (ignored by horizontal
    /// federations); `cost_per_point` is the marginal cost a client of a FACT federation
    /// reports (ignored elsewhere).
    pub async fn enroll(
        &self,
        secret: &str,
        name: &str,
        num_samples: u64,
        num_features: u32,
        cost_per_point: f64,
    ) -> ServiceResult<(String, String)> {
        let expected = auth::hash_token(&self.config.enrollment_secret);
        let given = auth::hash_token(secret);
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            return Err(ServiceError::Unauthenticated(format!(
                "wrong enrollment secret for federation `{}`",
                self.config.id
            )));
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(|c| c.is_control()) {
            return Err(ServiceError::InvalidArgument(format!(
                "client_name must be 1..={MAX_NAME_LEN} printable characters, got {name:?}"
            )));
        }
        if num_samples > MAX_NUM_SAMPLES {
            return Err(ServiceError::InvalidArgument(format!(
                "num_samples {num_samples} is larger than the maximum {MAX_NUM_SAMPLES}"
            )));
        }
        let cost_per_point = match &self.config.fact {
            Some(fact) => Some(crate::fact::check_reported_cost(fact, cost_per_point)?),
            None => None,
        };
        let mut st = self.state.lock().await;
        if matches!(
            st.record.status,
            FederationStatus::Finished | FederationStatus::Stopped
        ) {
            return Err(ServiceError::FailedPrecondition(format!(
                "federation `{}` is {} and takes no new clients",
                self.config.id,
                st.record.status.as_str()
            )));
        }
        if st.clients.len() >= MAX_CLIENTS {
            return Err(ServiceError::ResourceExhausted(format!(
                "federation `{}` already has {MAX_CLIENTS} clients, the most one federation takes; create another federation",
                self.config.id
            )));
        }
        if st.clients.iter().any(|c| c.name == name) {
            return Err(ServiceError::AlreadyExists(format!(
                "a client named `{name}` is already enrolled in federation `{}`; choose another name",
                self.config.id
            )));
        }
        if self.vertical.is_some() {
            crate::vertical::check_enrollment(&self.config, &st, num_features)?;
        }
        if self.config.bandit.is_some() {
            crate::bandit::check_enrollment(&self.config, &st)?;
        }
        if let Some(policy) = self.config.reward_policy()
            && (st.round.is_some() || st.record.committed_rounds > 0)
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "federation `{}` uses {policy}, whose state is sized by the clients of its first round; it takes no new clients once round 1 has opened",
                self.config.id
            )));
        }
        if let Some(f) = &self.config.fair_reward {
            // The stationarity test needs more rounds in its window than clients.
            let most = f.window.map_or(MAX_FAIR_REWARD_CLIENTS, |w| {
                w.saturating_sub(1).min(MAX_FAIR_REWARD_CLIENTS)
            });
            if st.clients.len() >= most {
                return Err(ServiceError::FailedPrecondition(format!(
                    "federation `{}` uses fair yet asymptotically equal rewards and takes at most {most} clients (fair_reward.window must exceed the number of clients; at most {MAX_FAIR_REWARD_CLIENTS} in any case); it has {}",
                    self.config.id,
                    st.clients.len()
                )));
            }
        }
        let seq = st.clients.len() as u64;
        let client_id = format!("client-{seq:04}");
        let token = auth::new_client_token(&client_id);
        let rec = ClientRecord {
            client_id: client_id.clone(),
            name: name.to_string(),
            token_hash: auth::hash_token(&token),
            num_samples,
            enrolled_at_ms: now_ms(),
            seq,
            cost_per_point,
        };
        self.store.add_client(&self.config.id, &rec)?;
        let index = st.clients.len();
        st.by_id.insert(client_id.clone(), index);
        st.clients.push(rec);
        if self.config.personal_models() {
            let initial = st.model.clone();
            st.personal.insert(client_id.clone(), initial);
        }
        drop(st);
        self.notify();
        tracing::info!(federation = %self.config.id, %client_id, name, "client enrolled");
        Ok((client_id, token))
    }

    /// A FACT federation's required contribution `m*` of `client_id` (0 otherwise).
    fn required_points(&self, st: &FedState, client_id: &str) -> f64 {
        let cost = st
            .by_id
            .get(client_id)
            .and_then(|&i| st.clients.get(i))
            .and_then(|c| c.cost_per_point);
        match (&self.config.fact, cost) {
            (Some(fact), Some(cost)) => fact.required_points(cost),
            _ => 0.0,
        }
    }

    /// Checks that `token` belongs to `claimed_client_id` in this federation.
    pub async fn authenticate(&self, token: &str, claimed_client_id: &str) -> ServiceResult<()> {
        let actual = auth::client_id_from_token(token).ok_or(auth::AuthError::Malformed)?;
        let st = self.state.lock().await;
        let rec = st
            .by_id
            .get(actual)
            .and_then(|&i| st.clients.get(i))
            .ok_or(auth::AuthError::Invalid)?;
        if !auth::token_matches(token, &rec.token_hash) {
            return Err(auth::AuthError::Invalid.into());
        }
        if actual != claimed_client_id {
            return Err(auth::AuthError::WrongIdentity {
                claimed: claimed_client_id.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Decides what `client_id` should do now.
    pub async fn next_task(&self, client_id: &str) -> NextTask {
        let st = self.state.lock().await;
        match st.record.status {
            FederationStatus::Finished | FederationStatus::Stopped => {
                return NextTask::Done {
                    final_model_version: st.model.version,
                    reason: format!("federation is {}", st.record.status.as_str()),
                };
            }
            FederationStatus::Waiting | FederationStatus::Running => {}
        }
        if let Some(spec) = &self.vertical {
            return crate::vertical::next_task(&self.config, spec, &st, client_id);
        }
        if let Some(settings) = &self.config.bandit {
            return crate::bandit::next_task(&self.config, settings, &st, client_id);
        }
        if let Some(round) = st.removed_in(client_id) {
            return NextTask::Removed {
                round,
                reason: format!("removed by reputation in round {round}"),
            };
        }
        let task = match &st.round {
            Some(r)
                if !r.closed
                    && r.selected.contains(client_id)
                    && !r.received.contains_key(client_id) =>
            {
                NextTask::Train {
                    round: r.number,
                    model_version: st.model.version,
                    deadline_ms: r.deadline_wall_ms.saturating_sub(now_ms()),
                    required_points: self.required_points(&st, client_id),
                }
            }
            Some(r) if r.received.contains_key(client_id) => NextTask::Wait {
                reason: format!(
                    "update for round {} received; waiting for the round to close",
                    r.number
                ),
            },
            Some(r) => NextTask::Wait {
                reason: format!("not selected for round {}", r.number),
            },
            None if st.clients.len() < self.config.min_clients => NextTask::Wait {
                reason: format!(
                    "waiting for clients: {} of {} enrolled",
                    st.clients.len(),
                    self.config.min_clients
                ),
            },
            None => NextTask::Wait {
                reason: match st.pending_valuation.keys().next() {
                    Some(round) => format!("waiting for the valuation of round {round}"),
                    None => "waiting for the next round to open".into(),
                },
            },
        };
        match (task, &st.loop_error) {
            (NextTask::Wait { reason }, Some(e)) => NextTask::Wait {
                reason: format!("{reason}; the coordinator is retrying after an error: {e}"),
            },
            (task, _) => task,
        }
    }

    /// The model `client_id` trains from at `version`: its own model under a reward
    /// policy (RFFL, fair reward), the global model otherwise. Under fair reward a client
    /// is thus never served a model newer than the one the policy gave it.
    pub async fn model_for(
        &self,
        client_id: &str,
        version: u64,
    ) -> ServiceResult<Arc<GlobalModel>> {
        if !self.config.personal_models() {
            return self.model(version).await;
        }
        let current = {
            let st = self.state.lock().await;
            match st.personal.get(client_id) {
                Some(m) => m.clone(),
                None => {
                    return Err(ServiceError::NotFound(format!(
                        "{client_id} has no model in federation `{}`",
                        self.config.id
                    )));
                }
            }
        };
        if current.version == version {
            return Ok(current);
        }
        if version > current.version {
            return Err(ServiceError::NotFound(format!(
                "model version {version} does not exist yet; the current version is {}",
                current.version
            )));
        }
        if version == 0 {
            // Every client starts from the initial global model.
            return self.model(0).await;
        }
        let params = self
            .store
            .get_client_model(&self.config.id, client_id, version)?
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "model version {version} of {client_id} is not stored"
                ))
            })?;
        Ok(Arc::new(GlobalModel::new(version, params)))
    }

    /// The global model of `version` (the current one from memory, older ones from the store).
    pub async fn model(&self, version: u64) -> ServiceResult<Arc<GlobalModel>> {
        let current = self.state.lock().await.model.clone();
        if current.version == version {
            return Ok(current);
        }
        if version > current.version {
            return Err(ServiceError::NotFound(format!(
                "model version {version} does not exist yet; the current version is {}",
                current.version
            )));
        }
        let params = self
            .store
            .get_model(&self.config.id, version)?
            .ok_or_else(|| {
                ServiceError::NotFound(format!("model version {version} is not stored"))
            })?;
        Ok(Arc::new(GlobalModel::new(version, params)))
    }

    /// Checks an upload header against the open round BEFORE its data is received, and
    /// returns the number of bytes the tensor must have and when the round closes.
    pub async fn check_claim(
        &self,
        client_id: &str,
        claim: &UploadClaim,
    ) -> ServiceResult<AdmittedClaim> {
        let Some(model) = self.config.model.as_ref() else {
            return Err(ServiceError::FailedPrecondition(format!(
                "federation `{}` is vertical: parties send embeddings with ExchangeEmbeddings, not model updates",
                self.config.id
            )));
        };
        let expected = model.num_params().saturating_mul(4);
        if claim.total_bytes != expected as u64 {
            return Err(ServiceError::InvalidArgument(format!(
                "wrong tensor length: the model has {} parameters ({expected} bytes), the header declares {} bytes",
                model.num_params(),
                claim.total_bytes
            )));
        }
        if claim.num_samples == 0 || claim.num_samples > MAX_NUM_SAMPLES {
            return Err(ServiceError::InvalidArgument(format!(
                "num_samples must be in 1..={MAX_NUM_SAMPLES}, got {}",
                claim.num_samples
            )));
        }
        if claim.metrics.len() > MAX_METRICS {
            return Err(ServiceError::InvalidArgument(format!(
                "at most {MAX_METRICS} metrics per update, got {}",
                claim.metrics.len()
            )));
        }
        for (name, value) in &claim.metrics {
            if name.is_empty() || name.len() > MAX_METRIC_NAME || !value.is_finite() {
                return Err(ServiceError::InvalidArgument(format!(
                    "metric {name:?} = {value}: names must be 1..={MAX_METRIC_NAME} bytes and values finite"
                )));
            }
        }
        if claim.sha256.len() != 64 || !claim.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ServiceError::InvalidArgument(format!(
                "sha256 must be 64 hex characters, got {:?}",
                claim.sha256
            )));
        }
        let st = self.state.lock().await;
        let deadline = round_admits(&st, client_id, claim)?;
        Ok(AdmittedClaim {
            expected_bytes: expected,
            deadline,
        })
    }

    /// Reserves `client_id`'s single upload slot; `ALREADY_EXISTS` while another upload
    /// of the same client is still being received or stored.
    pub fn begin_upload(self: &Arc<Self>, client_id: &str) -> ServiceResult<UploadSlot> {
        if !self.uploading().insert(client_id.to_string()) {
            return Err(ServiceError::AlreadyExists(format!(
                "an upload from {client_id} is already in progress; wait for its answer instead of sending the update again"
            )));
        }
        Ok(UploadSlot {
            fed: self.clone(),
            client_id: client_id.to_string(),
        })
    }

    fn uploading(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent even if a holder panicked.
        self.uploading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a fully received, checked update durable and records it in the open round.
    /// Returns only after the update is in the store.
    ///
    /// The work runs on its own task: if the caller is cancelled (the client hung up),
    /// the update is still either both stored and recorded, or neither.
    pub async fn accept_update(
        self: &Arc<Self>,
        client_id: &str,
        claim: UploadClaim,
        delta: Vec<f32>,
    ) -> ServiceResult<u64> {
        let this = self.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move { this.store_update(&client_id, claim, delta).await })
            .await
            .map_err(|e| ServiceError::Internal(format!("update task failed: {e}")))?
    }

    async fn store_update(
        &self,
        client_id: &str,
        claim: UploadClaim,
        delta: Vec<f32>,
    ) -> ServiceResult<u64> {
        let mut st = self.state.lock().await;
        round_admits(&st, client_id, &claim)?;
        check_applicable(st.personal.get(client_id).unwrap_or(&st.model), &delta)?;
        if self.config.fair_reward.is_some() {
            // Trained from its own model, the update is still added to the global model.
            check_applicable(&st.model, &delta)?;
        }
        let record = UpdateRecord {
            client_id: client_id.to_string(),
            round: claim.round,
            model_version: claim.model_version,
            num_samples: claim.num_samples,
            metrics: claim.metrics,
            sha256: claim.sha256,
            received_at_ms: now_ms(),
        };
        let delta = Arc::new(delta);
        // Durable before acknowledged: the write is fsynced by the store. It runs on the
        // blocking pool; the state lock keeps the round from closing meanwhile.
        let store = self.store.clone();
        let fed_id = self.config.id.clone();
        let (rec2, delta2) = (record.clone(), delta.clone());
        tokio::task::spawn_blocking(move || store.put_update(&fed_id, &rec2, &delta2))
            .await
            .map_err(|e| ServiceError::Internal(format!("storage task failed: {e}")))??;
        let round = claim.round;
        if let Some(r) = st.round.as_mut() {
            r.received
                .insert(client_id.to_string(), AcceptedUpdate { record, delta });
        }
        drop(st);
        self.notify();
        tracing::debug!(federation = %self.config.id, client_id, round, "update accepted");
        Ok(round)
    }

    /// Stops the federation: no more rounds; clients are told they are done.
    pub async fn stop(&self) -> ServiceResult<FederationRecord> {
        let mut st = self.state.lock().await;
        if !matches!(
            st.record.status,
            FederationStatus::Finished | FederationStatus::Stopped
        ) {
            let mut rec = st.record.clone();
            rec.status = FederationStatus::Stopped;
            self.store.put_federation(&rec)?;
            st.record = rec;
            if let Some(r) = st.round.as_mut() {
                r.closed = true;
            }
        }
        let rec = st.record.clone();
        drop(st);
        self.notify();
        Ok(rec)
    }

    /// Deterministic selection of `round`'s participants among the enrolled clients.
    pub(crate) fn select(&self, clients: &[ClientRecord], round: u64) -> BTreeSet<String> {
        let k = self.config.clients_per_round;
        if k == 0 || k >= clients.len() {
            return clients.iter().map(|c| c.client_id.clone()).collect();
        }
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.config.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        sample(&mut rng, clients.len(), k)
            .into_iter()
            .filter_map(|i| clients.get(i).map(|c| c.client_id.clone()))
            .collect()
    }

    /// How long a `Wait` long-poll may hold a PullTask call.
    pub(crate) fn long_poll(&self) -> Duration {
        Duration::from_millis(self.config.round_timeout_ms.min(1_000))
    }
}

/// Whether `delta` can be added to `model`: same length, and every sum a finite f32.
///
/// Checked per update, this also keeps the aggregate finite: a weighted mean of deltas
/// lies between their extremes, so `global + mean` lies between finite sums. Without it
/// one client could push the global model to infinity and break every other client.
fn check_applicable(model: &GlobalModel, delta: &[f32]) -> ServiceResult<()> {
    if delta.len() != model.params.len() {
        return Err(ServiceError::InvalidArgument(format!(
            "wrong tensor length: the model has {} parameters, the update has {}",
            model.params.len(),
            delta.len()
        )));
    }
    match model
        .params
        .iter()
        .zip(delta)
        .position(|(g, d)| !(g + d).is_finite())
    {
        None => Ok(()),
        Some(index) => Err(ServiceError::InvalidArgument(format!(
            "update value {} at index {index} overflows the model: added to the global parameter {} it is not a finite f32; send a smaller update",
            delta.get(index).copied().unwrap_or(f32::NAN),
            model.params.get(index).copied().unwrap_or(f32::NAN),
        ))),
    }
}

/// Whether the open round takes `claim` from `client_id` (the checks shared by the
/// pre-data and the commit path); returns the round's deadline.
fn round_admits(st: &FedState, client_id: &str, claim: &UploadClaim) -> ServiceResult<Instant> {
    if matches!(
        st.record.status,
        FederationStatus::Finished | FederationStatus::Stopped
    ) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the federation is {}; it takes no more updates",
            st.record.status.as_str()
        )));
    }
    if let Some(round) = st.removed_in(client_id) {
        return Err(ServiceError::PermissionDenied(format!(
            "{client_id} was removed by reputation in round {round}; it cannot upload"
        )));
    }
    let Some(r) = st.round.as_ref() else {
        return Err(ServiceError::FailedPrecondition(format!(
            "no round is open; round {} has not started",
            claim.round
        )));
    };
    if claim.round < r.number || (claim.round == r.number && r.closed) {
        return Err(ServiceError::FailedPrecondition(format!(
            "round {} is closed; the open round is {}{}",
            claim.round,
            r.number,
            if r.closed { " (closing)" } else { "" }
        )));
    }
    if claim.round > r.number {
        return Err(ServiceError::InvalidArgument(format!(
            "round {} has not started; the open round is {}",
            claim.round, r.number
        )));
    }
    if claim.model_version != st.model.version {
        return Err(ServiceError::InvalidArgument(format!(
            "update was trained from model version {}, but round {} trains from version {}; download the current model",
            claim.model_version, r.number, st.model.version
        )));
    }
    if r.received.contains_key(client_id) {
        return Err(ServiceError::AlreadyExists(format!(
            "an update from {client_id} for round {} was already accepted",
            r.number
        )));
    }
    if !r.selected.contains(client_id) {
        return Err(ServiceError::FailedPrecondition(format!(
            "{client_id} was not selected for round {}",
            r.number
        )));
    }
    Ok(r.deadline)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::mpsc;

    use super::*;
    use crate::store::StoreError;
    use crate::store::kv::{Batch, Entries, KvBackend};
    use crate::store::memory::MemoryBackend;

    /// A one-client federation without valuation, `rounds` rounds, 9 parameters.
    pub(crate) fn config(rounds: u64) -> FederationConfig {
        let config: FederationConfig = toml::from_str(&format!(
            r#"
            id = "unit"
            enrollment_secret = "s"
            rounds = {rounds}
            min_clients = 1
            round_timeout_ms = 600000
            model = {{ kind = "logistic_regression", num_features = 2, num_classes = 3 }}
            valuation = {{ method = "none" }}
            "#
        ))
        .expect("config parses");
        config.validate().expect("config is valid");
        config
    }

    /// How the test backend treats commits that write an update or a round.
    #[derive(Default)]
    pub(crate) struct Faults {
        /// Commits of `round/` keys fail (nothing written) while set.
        pub fail_round_commits: AtomicBool,
        /// This many `round/` commits are written and THEN reported as failed.
        pub durable_but_failed: AtomicU32,
        /// When set, an `update/` commit announces itself here and waits for a go.
        pub gate: std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    /// A memory backend with injectable faults.
    pub(crate) struct FaultyBackend {
        inner: MemoryBackend,
        faults: Arc<Faults>,
    }

    impl FaultyBackend {
        pub(crate) fn store(faults: Arc<Faults>) -> Store {
            Store::with_backend(FaultyBackend {
                inner: MemoryBackend::new(),
                faults,
            })
        }
    }

    fn injected() -> StoreError {
        StoreError::Backend {
            backend: "test",
            context: "committing".into(),
            source: "injected fault".into(),
        }
    }

    impl KvBackend for FaultyBackend {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }

        fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
            self.inner.scan_prefix(prefix)
        }

        fn commit(&self, batch: Batch) -> Result<(), StoreError> {
            let writes = |p: &[u8]| batch.puts.iter().any(|(k, _)| k.starts_with(p));
            if writes(b"update/") {
                let gate = self.faults.gate.lock().expect("gate").take();
                if let Some((started, go)) = gate {
                    started.send(()).expect("test listens");
                    go.recv().expect("test releases the write");
                }
            }
            if writes(b"round/") {
                if self.faults.fail_round_commits.load(Ordering::SeqCst) {
                    return Err(injected());
                }
                let once = self.faults.durable_but_failed.fetch_update(
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                    |n| n.checked_sub(1),
                );
                if once.is_ok() {
                    self.inner.commit(batch)?;
                    return Err(injected());
                }
            }
            self.inner.commit(batch)
        }
    }

    /// A federation of `rounds` rounds with one enrolled client whose round 1 is open.
    pub(crate) async fn open_federation(store: Store, rounds: u64) -> (Arc<Federation>, String) {
        let fed = Federation::create(config(rounds), store).expect("created");
        let (client, _token) = fed
            .enroll("s", "alice", 10, 0, 0.0)
            .await
            .expect("enrolled");
        let mut st = fed.state.lock().await;
        let selected = fed.select(&st.clients, 1);
        st.round = Some(OpenRound {
            number: 1,
            selected,
            received: BTreeMap::new(),
            deadline: Instant::now() + Duration::from_secs(600),
            deadline_wall_ms: now_ms() + 600_000,
            closed: false,
        });
        drop(st);
        (fed, client)
    }

    /// Waits (bounded, as a guard against a hang) until `f` holds after a change.
    pub(crate) async fn until<F: std::future::Future<Output = bool>>(
        fed: &Federation,
        mut f: impl FnMut() -> F,
    ) {
        let mut changes = fed.subscribe_changes();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !f().await {
                let _ = changes.changed().await;
            }
        })
        .await
        .expect("condition reached");
    }

    pub(crate) fn claim(round: u64, delta: &[f32]) -> UploadClaim {
        let bytes = tensor::to_le_bytes(delta);
        UploadClaim {
            round,
            model_version: 0,
            num_samples: 10,
            metrics: Vec::new(),
            total_bytes: bytes.len() as u64,
            sha256: tensor::sha256_hex(&bytes),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_cancelled_during_its_write_is_still_recorded() {
        let faults = Arc::new(Faults::default());
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        let (fed, client) = open_federation(FaultyBackend::store(faults.clone()), 2).await;
        *faults.gate.lock().expect("gate") = Some((started_tx, go_rx));

        let delta = vec![0.5f32; 9];
        let upload = {
            let (fed, client, delta) = (fed.clone(), client.clone(), delta.clone());
            tokio::spawn(async move { fed.accept_update(&client, claim(1, &delta), delta).await })
        };
        // The write has started; the client hangs up (its handler future is dropped).
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .expect("join")
            .expect("the update write starts");
        upload.abort();
        assert!(upload.await.expect_err("aborted").is_cancelled());
        go_tx.send(()).expect("release the write");

        // What is durable is also in the round; a retry is a duplicate, not a second write.
        let err = fed
            .accept_update(&client, claim(1, &delta), delta.clone())
            .await
            .expect_err("duplicate");
        assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err}");
        let st = fed.state.lock().await;
        let round = st.round.as_ref().expect("round open");
        let got = round.received.get(&client).expect("recorded in the round");
        assert_eq!(got.delta.as_slice(), delta.as_slice());
        let stored = fed.store().list_updates("unit", 1).expect("listed");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].1, delta);
    }

    #[tokio::test]
    async fn rffl_refuses_enrollment_once_the_first_round_opened() {
        let mut cfg = config(3);
        cfg.reputation = Some(crate::config::RfflSettings::with_gamma(1.0));
        let fed = Federation::create(cfg, Store::memory()).expect("created");
        let (alice, _) = fed
            .enroll("s", "alice", 10, 0, 0.0)
            .await
            .expect("enrolled");
        // Before any round every client owns the initial model.
        let own = fed.model_for(&alice, 0).await.expect("own model");
        assert_eq!(own.params, fed.model(0).await.expect("global").params);
        fed.state.lock().await.round = Some(OpenRound {
            number: 1,
            selected: BTreeSet::from([alice]),
            received: BTreeMap::new(),
            deadline: Instant::now() + Duration::from_secs(600),
            deadline_wall_ms: now_ms() + 600_000,
            closed: false,
        });
        let err = fed
            .enroll("s", "bob", 10, 0, 0.0)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, ServiceError::FailedPrecondition(m) if m.contains("takes no new clients once round 1 has opened")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fair_reward_caps_enrollment_and_checks_updates_against_both_models() {
        let mut cfg = config(3);
        cfg.fair_reward = Some(crate::config::FairRewardSettings {
            window: Some(3),
            ..Default::default()
        });
        let fed = Federation::create(cfg, Store::memory()).expect("created");
        let (alice, _) = fed
            .enroll("s", "alice", 10, 0, 0.0)
            .await
            .expect("enrolled");
        fed.enroll("s", "bob", 10, 0, 0.0).await.expect("enrolled");
        // A window of 3 rounds takes at most 2 clients.
        let err = fed
            .enroll("s", "carol", 10, 0, 0.0)
            .await
            .expect_err("window");
        assert!(
            matches!(&err, ServiceError::FailedPrecondition(m) if m.contains("takes at most 2 clients")),
            "{err}"
        );
        let own = fed.model_for(&alice, 0).await.expect("own model");
        assert_eq!(own.params, fed.model(0).await.expect("global").params);

        let mut cfg = config(3);
        cfg.fair_reward = Some(crate::config::FairRewardSettings::default());
        let open = Federation::create(cfg, Store::memory()).expect("created");
        let (alice, _) = open
            .enroll("s", "alice", 10, 0, 0.0)
            .await
            .expect("enrolled");
        open.state.lock().await.round = Some(OpenRound {
            number: 1,
            selected: BTreeSet::from([alice.clone()]),
            received: BTreeMap::new(),
            deadline: Instant::now() + Duration::from_secs(600),
            deadline_wall_ms: now_ms() + 600_000,
            closed: false,
        });
        let err = open
            .enroll("s", "late", 10, 0, 0.0)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, ServiceError::FailedPrecondition(m) if m.contains("uses fair yet asymptotically equal rewards") && m.contains("takes no new clients once round 1 has opened")),
            "{err}"
        );
        // An update that fits the client's own model but overflows the global one (to
        // which it is added) is refused.
        {
            let mut st = open.state.lock().await;
            st.model = Arc::new(GlobalModel::new(0, vec![f32::MAX; 9]));
            st.personal
                .insert(alice.clone(), Arc::new(GlobalModel::new(0, vec![0.0; 9])));
        }
        let delta = vec![f32::MAX; 9];
        let err = open
            .accept_update(&alice, claim(1, &delta), delta)
            .await
            .expect_err("overflows the global model");
        assert!(
            matches!(&err, ServiceError::InvalidArgument(m) if m.contains("overflows")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_update_that_overflows_the_model_is_refused() {
        let (fed, client) = open_federation(Store::memory(), 2).await;
        fed.state.lock().await.model = Arc::new(GlobalModel::new(0, vec![f32::MAX; 9]));
        let mut delta = vec![0.0f32; 9];
        delta[4] = f32::MAX;
        let err = fed
            .accept_update(&client, claim(1, &delta), delta)
            .await
            .expect_err("overflow");
        assert!(
            matches!(&err, ServiceError::InvalidArgument(m) if m.contains("index 4") && m.contains("overflows")),
            "{err}"
        );
        assert!(
            fed.store()
                .list_updates("unit", 1)
                .expect("listed")
                .is_empty()
        );
        // A finite sum is fine.
        let delta = vec![-1.0e38f32; 9];
        assert_eq!(
            fed.accept_update(&client, claim(1, &delta), delta)
                .await
                .expect("accepted"),
            1
        );
    }

    #[tokio::test]
    async fn a_client_has_one_upload_slot_at_a_time() {
        let (fed, client) = open_federation(Store::memory(), 2).await;
        let slot = fed.begin_upload(&client).expect("first slot");
        let err = fed.begin_upload(&client).expect_err("second slot");
        assert!(
            matches!(&err, ServiceError::AlreadyExists(m) if m.contains("in progress")),
            "{err}"
        );
        let other = fed
            .begin_upload("client-9999")
            .expect("others are independent");
        drop(slot);
        let _again = fed.begin_upload(&client).expect("freed when dropped");
        drop(other);
    }

    #[tokio::test]
    async fn check_claim_returns_the_round_deadline_and_size() {
        let (fed, client) = open_federation(Store::memory(), 2).await;
        let admitted = fed
            .check_claim(&client, &claim(1, &[0.0; 9]))
            .await
            .expect("admitted");
        assert_eq!(admitted.expected_bytes, 36);
        let deadline = fed.state.lock().await.round.as_ref().map(|r| r.deadline);
        assert_eq!(Some(admitted.deadline), deadline);
    }

    #[tokio::test]
    async fn wait_reasons_carry_the_round_loop_error() {
        let (fed, _client) = open_federation(Store::memory(), 2).await;
        fed.set_loop_error(Some("disk full".into())).await;
        match fed.next_task("client-9999").await {
            NextTask::Wait { reason } => assert_eq!(
                reason,
                "not selected for round 1; the coordinator is retrying after an error: disk full"
            ),
            other => panic!("unexpected {other:?}"),
        }
        fed.set_loop_error(None).await;
        assert_eq!(
            fed.next_task("client-9999").await,
            NextTask::Wait {
                reason: "not selected for round 1".into()
            }
        );
    }
}
