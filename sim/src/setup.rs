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

/// Replaces every label `y` by `num_classes - 1 - y` (labels must be below `num_classes`,
/// which holds for a [`Dataset`]).
pub fn flip_labels(labels: &mut [u32], num_classes: usize) {
    let top = num_classes.saturating_sub(1) as u32;
    for y in labels {
        *y = top.saturating_sub(*y);
    }
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
    config.validate().map_err(SimError::Config)?;
    if config.vertical.is_some() {
        return Err(SimError::Config(
            "a vertical scenario has parties, not client data sets: see fedval_sim::vertical"
                .into(),
        ));
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
            _ => train.subset(&rows),
        };
        match behaviour {
            Behaviour::Noisy => local.labels.shuffle(&mut rng),
            Behaviour::LabelFlip => flip_labels(&mut local.labels, train.num_classes),
            // One party behind several identities: every identity holds the first one's data.
            Behaviour::Sybil => {
                if let Some(first) = clients
                    .iter()
                    .find(|c: &&ClientPlan| c.behaviour == Behaviour::Sybil)
                {
                    local = first.data.clone();
                }
            }
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Adversaries;

    fn config(adversaries: Adversaries) -> SimConfig {
        SimConfig {
            noisy: 0,
            tiny: 0,
            adversaries,
            ..SimConfig::default()
        }
    }

    #[test]
    fn label_flippers_train_on_mirrored_labels() {
        let plain = prepare(&config(Adversaries::default())).expect("prepare");
        let flipped = prepare(&config(Adversaries {
            label_flip: 2,
            ..Adversaries::default()
        }))
        .expect("prepare");
        for i in 0..2 {
            let (a, b) = (&plain.clients[i].data, &flipped.clients[i].data);
            assert_eq!(flipped.clients[i].behaviour, Behaviour::LabelFlip);
            assert_eq!(a.features, b.features);
            let expected: Vec<u32> = a.labels.iter().map(|&y| 9 - y).collect();
            assert_eq!(b.labels, expected);
        }
        for i in 2..10 {
            assert_eq!(plain.clients[i].data.labels, flipped.clients[i].data.labels);
        }
        assert_eq!(plain.test.labels, flipped.test.labels);
        let mut odd = vec![0, 1, 2];
        flip_labels(&mut odd, 3);
        assert_eq!(odd, [2, 1, 0]);
    }

    #[test]
    fn sybil_identities_share_the_first_ones_data() {
        let prepared = prepare(&config(Adversaries {
            sybil_copies: 3,
            ..Adversaries::default()
        }))
        .expect("prepare");
        let first = &prepared.clients[0].data;
        for plan in &prepared.clients[1..3] {
            assert_eq!(plan.behaviour, Behaviour::Sybil);
            assert_eq!(&plan.data.labels, &first.labels);
            assert_eq!(&plan.data.features, &first.features);
        }
        assert_ne!(prepared.clients[3].data.labels, first.labels);
    }
}
