//! One federation: its configuration, enrolled clients, global model and open round.
//!
//! A [`Federation`] is shared by the gRPC handlers (enroll, pull a task, download the
//! model, upload an update) and by its round loop (`round_loop`), which alone opens,
//! closes and commits rounds. All mutable state sits behind one async mutex; every
//! change bumps a `watch` epoch so long-polling clients and the round loop wake up.
//!
//! **Invariant:** an update is acknowledged only after `Store::put_update` returned,
//! i.e. once it is durable; a round's results, its new model and the federation's
//! progress are committed in one atomic batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
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
use crate::config::FederationConfig;
use crate::error::{ServiceError, ServiceResult};
use crate::store::{
    ClientRecord, FederationRecord, FederationStatus, RoundRecord, Store, UpdateRecord,
};

/// Longest client name accepted at enrollment.
const MAX_NAME_LEN: usize = 64;
/// Most metrics an upload may carry, and the longest metric name.
const MAX_METRICS: usize = 64;
const MAX_METRIC_NAME: usize = 64;
/// Largest sample count a client may claim (it weighs FedAvg, so it is bounded).
const MAX_NUM_SAMPLES: u64 = 1 << 40;

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
    },
    /// Nothing to do yet.
    Wait { reason: String },
    /// The federation has ended.
    Done {
        final_model_version: u64,
        reason: String,
    },
}

/// What an upload header claims, before its data arrives.
#[derive(Clone, Debug)]
pub struct UploadClaim {
    pub round: u64,
    pub model_version: u64,
    pub num_samples: u64,
    pub metrics: Vec<(String, f64)>,
    pub total_bytes: u64,
    pub sha256: String,
}

/// Round-level events, fanned out to Admin watchers.
#[derive(Clone, Debug)]
pub enum Event {
    /// A round opened with these selected clients.
    RoundStarted { round: u64, selected: Vec<String> },
    /// A round was committed.
    RoundCommitted(Box<RoundRecord>),
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
    pub round: Option<OpenRound>,
}

/// A federation hosted by this server.
#[derive(Debug)]
pub struct Federation {
    config: FederationConfig,
    validation: Option<Arc<Dataset>>,
    store: Store,
    pub(crate) state: Mutex<FedState>,
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
        let params = config.model.init_params(config.seed);
        let record = FederationRecord {
            config: config.clone(),
            status: FederationStatus::Waiting,
            committed_rounds: 0,
            model_version: 0,
        };
        if store.get_federation(&config.id)?.is_some() {
            return Err(ServiceError::AlreadyExists(format!(
                "federation `{}` already exists; choose another id",
                config.id
            )));
        }
        store.create_federation(&record, &params)?;
        Self::assemble(record, Vec::new(), GlobalModel::new(0, params), store)
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
        Self::assemble(record, clients, model, store)
    }

    fn assemble(
        record: FederationRecord,
        clients: Vec<ClientRecord>,
        model: GlobalModel,
        store: Store,
    ) -> ServiceResult<Arc<Self>> {
        let config = record.config.clone();
        let validation = match &config.validation {
            Some(v) => Some(Arc::new(v.to_dataset(config.model.num_classes())?)),
            None => None,
        };
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
            store,
            state: Mutex::new(FedState {
                record,
                clients,
                by_id,
                model: Arc::new(model),
                round: None,
            }),
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

    /// A snapshot of the federation's record and clients.
    pub async fn snapshot(&self) -> (FederationRecord, Vec<ClientRecord>) {
        let st = self.state.lock().await;
        (st.record.clone(), st.clients.clone())
    }

    /// Enrolls a client with the federation's secret; returns its id and bearer token.
    pub async fn enroll(
        &self,
        secret: &str,
        name: &str,
        num_samples: u64,
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
        if st.clients.iter().any(|c| c.name == name) {
            return Err(ServiceError::AlreadyExists(format!(
                "a client named `{name}` is already enrolled in federation `{}`; choose another name",
                self.config.id
            )));
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
        };
        self.store.add_client(&self.config.id, &rec)?;
        let index = st.clients.len();
        st.by_id.insert(client_id.clone(), index);
        st.clients.push(rec);
        drop(st);
        self.notify();
        tracing::info!(federation = %self.config.id, %client_id, name, "client enrolled");
        Ok((client_id, token))
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
        match &st.round {
            Some(r)
                if !r.closed
                    && r.selected.contains(client_id)
                    && !r.received.contains_key(client_id) =>
            {
                NextTask::Train {
                    round: r.number,
                    model_version: st.model.version,
                    deadline_ms: r.deadline_wall_ms.saturating_sub(now_ms()),
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
            None => NextTask::Wait {
                reason: format!(
                    "waiting for clients: {} of {} enrolled",
                    st.clients.len(),
                    self.config.min_clients
                ),
            },
        }
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
    /// returns the number of bytes the tensor must have.
    pub async fn check_claim(&self, client_id: &str, claim: &UploadClaim) -> ServiceResult<usize> {
        let expected = self.config.model.num_params() * 4;
        if claim.total_bytes != expected as u64 {
            return Err(ServiceError::InvalidArgument(format!(
                "wrong tensor length: the model has {} parameters ({expected} bytes), the header declares {} bytes",
                self.config.model.num_params(),
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
        round_admits(&st, client_id, claim)?;
        Ok(expected)
    }

    /// Makes a fully received, checked update durable and records it in the open round.
    /// Returns only after the update is in the store.
    pub async fn accept_update(
        &self,
        client_id: &str,
        claim: UploadClaim,
        delta: Vec<f32>,
    ) -> ServiceResult<u64> {
        let mut st = self.state.lock().await;
        round_admits(&st, client_id, &claim)?;
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

/// Whether the open round takes `claim` from `client_id` (the checks shared by the
/// pre-data and the commit path).
fn round_admits(st: &FedState, client_id: &str, claim: &UploadClaim) -> ServiceResult<()> {
    if matches!(
        st.record.status,
        FederationStatus::Finished | FederationStatus::Stopped
    ) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the federation is {}; it takes no more updates",
            st.record.status.as_str()
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
    Ok(())
}
