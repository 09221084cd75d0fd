//! The federations hosted by one server, and their round loops.
//!
//! On start the registry restores every federation from the store and starts a round
//! loop for each one that has not ended; `create` persists a new federation and starts
//! its loop. Dropping the registry (or calling `shutdown`) ends every loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::FederationConfig;
use crate::error::{ServiceError, ServiceResult};
use crate::federation::Federation;
use crate::store::Store;
use crate::{round_loop, valuation_worker};

/// All federations of a server.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    federations: RwLock<HashMap<String, Arc<Federation>>>,
    loops: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
}

impl Registry {
    /// Restores every stored federation and starts the round loops. Must run inside a
    /// tokio runtime.
    pub fn open(store: Store) -> ServiceResult<Arc<Self>> {
        let (shutdown, _) = watch::channel(false);
        let registry = Arc::new(Registry {
            store: store.clone(),
            federations: RwLock::new(HashMap::new()),
            loops: Mutex::new(Vec::new()),
            shutdown,
        });
        for record in store.list_federations()? {
            let id = record.config.id.clone();
            let (committed, status) = (record.committed_rounds, record.status);
            let fed = Federation::restore(record, store.clone())?;
            tracing::info!(federation = %id, committed_rounds = committed, status = status.as_str(), "federation restored");
            registry.insert(fed);
        }
        Ok(registry)
    }

    /// Creates, persists and starts a federation.
    pub fn create(&self, config: FederationConfig) -> ServiceResult<Arc<Federation>> {
        if self.read().contains_key(&config.id) {
            return Err(ServiceError::AlreadyExists(format!(
                "federation `{}` already exists; choose another id",
                config.id
            )));
        }
        let fed = Federation::create(config, self.store.clone())?;
        tracing::info!(federation = %fed.id(), "federation created");
        self.insert(fed.clone());
        Ok(fed)
    }

    /// The federation `id`.
    pub fn get(&self, id: &str) -> ServiceResult<Arc<Federation>> {
        self.read().get(id).cloned().ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no federation `{id}` on this server; Admin.ListFederations lists them"
            ))
        })
    }

    /// Every federation, ordered by id.
    pub fn list(&self) -> Vec<Arc<Federation>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Asks every round loop to stop at its next safe point.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    fn insert(&self, fed: Arc<Federation>) {
        let round_loop = tokio::spawn(round_loop::run(fed.clone(), self.shutdown.subscribe()));
        // A vertical federation's driver values the run itself (`vertical::value`); a
        // bandit federation has no model to value.
        let valued = fed.vertical().is_none() && fed.config().bandit.is_none();
        let valuation = valued.then(|| {
            tokio::spawn(valuation_worker::run(
                fed.clone(),
                self.shutdown.subscribe(),
            ))
        });
        // A poisoned lock only means a panic elsewhere; the collections stay consistent,
        // and skipping the insert would leave a running loop nobody can reach.
        self.loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(std::iter::once(round_loop).chain(valuation));
        self.federations
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fed.id().to_string(), fed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Federation>>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        self.federations.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        let loops = self.loops.get_mut().unwrap_or_else(PoisonError::into_inner);
        for handle in loops.drain(..) {
            handle.abort();
        }
    }
}
