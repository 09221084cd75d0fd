//! Turns a [`SimConfig`] into data: a test set, the server's validation set, and one
//! local data set per client with its behaviour applied. Deterministic by seed.

use fedval_core::data::{self, Dataset, Standardizer, partition};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::SimError;
use crate::scenario::{Behaviour, Partition, SimConfig};

/// One simulated client before it starts.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// Display name, also its enrollment name.
    pub name: String,
    /// What it does.
    pub behaviour: Behaviour,
    /// Its local data (behaviour already applied).
    pub data: Dataset,
}

/// The data of a whole simulation.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// One plan per client, in index order.
    pub clients: Vec<ClientPlan>,
    /// The server's validation set.
    pub validation: Dataset,
    /// The held-out test set.
    pub test: Dataset,
}

/// Splits the data set and builds every client's local data.
pub fn prepare(config: &SimConfig) -> Result<Prepared, SimError> {
    if config.clients == 0 {
        return Err(SimError::Config("clients must be at least 1".into()));
    }
    if config.noisy + config.tiny > config.clients {
        return Err(SimError::Config(format!(
            "noisy ({}) + tiny ({}) exceeds the number of clients ({})",
            config.noisy, config.tiny, config.clients
        )));
    }
    let mut full = data::builtin::by_name(&config.dataset)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (rest, test_rows) = partition::train_test_split(full.len(), config.test_fraction, &mut rng);
    let val_fraction = config.validation_fraction / (1.0 - config.test_fraction).max(1e-9);
    let (train_pos, val_pos) = partition::train_test_split(rest.len(), val_fraction, &mut rng);
    let pick = |pos: &[usize]| pos.iter().map(|&p| rest[p]).collect::<Vec<usize>>();
    let (train_rows, val_rows) = (pick(&train_pos), pick(&val_pos));

    // Standardise with statistics of the training rows only (digits are already in [0, 1]).
    if config.dataset != "digits" {
        let stats = Standardizer::fit(&full.subset(&train_rows));
        stats.apply(&mut full)?;
    }
    let train = full.subset(&train_rows);
    let labels = &train.labels;
    let parts = match config.partition {
        Partition::Iid => partition::iid(train.len(), config.clients, &mut rng)?,
        Partition::Dirichlet { alpha } => partition::dirichlet_label_skew(
            labels,
            train.num_classes,
            config.clients,
            alpha,
            config.tiny_samples.max(2),
            &mut rng,
        )?,
        Partition::Quantity { alpha } => partition::quantity_skew(
            train.len(),
            config.clients,
            alpha,
            config.tiny_samples.max(2),
            &mut rng,
        )?,
    };
    let mut clients = Vec::with_capacity(config.clients);
    for (index, mut rows) in parts.into_iter().enumerate() {
        let behaviour = config.behaviour(index);
        let mut local = match behaviour {
            Behaviour::Tiny => {
                rows.shuffle(&mut rng);
                rows.truncate(config.tiny_samples.max(1));
                rows.sort_unstable();
                train.subset(&rows)
            }
            Behaviour::Honest | Behaviour::Noisy => train.subset(&rows),
        };
        if behaviour == Behaviour::Noisy {
            local.labels.shuffle(&mut rng);
        }
        clients.push(ClientPlan {
            name: format!("client-{index:02}"),
            behaviour,
            data: local,
        });
    }
    Ok(Prepared {
        clients,
        validation: full.subset(&val_rows),
        test: full.subset(&test_rows),
    })
}
