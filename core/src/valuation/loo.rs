//! Leave-one-out values (ALGORITHMS.md 2.5): `phi_i = v(N) - v(N \ {i})`.
//!
//! The cheapest valuation there is: `n + 1` evaluations, deterministic, evaluated as one
//! batch through [`Metered::values`] (so a costly game scores the `n + 1` sub-models in
//! parallel). It ignores every coalition but the largest ones, so it undervalues
//! players whose contribution others duplicate; it is reported with stop
//! [`StopReason::Exact`] (the leave-one-out values themselves are exact) and no
//! standard errors.

use rand::Rng;

use super::{
    Coalition, Estimator, IncrementalGame, Metered, Method, StopReason, Valuation, ValuationError,
};

/// Leave-one-out values `v(N) - v(N minus i)`; needs `n + 1` evaluations and no budget of
/// its own (a shared meter's budget still applies).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LeaveOneOut;

impl Estimator for LeaveOneOut {
    fn method(&self) -> Method {
        Method::LeaveOneOut
    }

    fn budget(&self) -> Option<u64> {
        None
    }

    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        _rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        let n = game.n_players();
        if n == 0 {
            return Err(ValuationError::NoPlayers);
        }
        let full = Coalition::full(n);
        let mut coalitions = Vec::with_capacity(n + 1);
        coalitions.push(full.clone());
        coalitions.extend((0..n).map(|i| {
            let mut without = full.clone();
            without.remove(i);
            without
        }));
        let start = game.evaluations();
        let remaining = game.remaining();
        let values = game.values(&coalitions).map_err(|e| match e {
            ValuationError::BudgetExhausted { budget } => ValuationError::BudgetTooSmall {
                budget: remaining.unwrap_or(budget),
                needed: n as u64 + 1,
                n,
                method: Method::LeaveOneOut,
            },
            other => other,
        })?;
        let (v_full, without) = values.split_first().ok_or(ValuationError::NoPlayers)?;
        Ok(Valuation {
            values: without.iter().map(|v| v_full - v).collect(),
            std_errors: None,
            evaluations: game.evaluations() - start,
            stop: StopReason::Exact,
            method: Method::LeaveOneOut,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::Tracked;
    use crate::valuation::games::{Additive, Airport, Counting, Glove};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn loo(game: impl crate::valuation::Game) -> Valuation {
        LeaveOneOut
            .estimate(&mut Tracked::new(game), &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap()
    }

    #[test]
    fn additive_game_gives_the_amounts() {
        let v = loo(Additive {
            values: vec![1.5, -2.0, 0.0, 7.25],
        });
        assert_eq!(v.values, vec![1.5, -2.0, 0.0, 7.25]);
        assert_eq!(
            (v.evaluations, v.stop, v.std_errors, v.method),
            (5, StopReason::Exact, None, Method::LeaveOneOut)
        );
    }

    #[test]
    fn airport_by_hand() {
        // v(N) = 3; only the unique largest runway is missed when its owner leaves.
        let v = loo(Airport {
            costs: vec![1.0, 2.0, 2.0, 3.0],
        });
        assert_eq!(v.values, vec![0.0, 0.0, 0.0, 1.0]);
        // Two tied largest runways: nobody is missed.
        let v = loo(Airport {
            costs: vec![3.0, 1.0, 3.0],
        });
        assert_eq!(v.values, vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn glove_by_hand() {
        // 1 left + 2 right: v(N) = 1; without the left glove 0, without a right one 1.
        assert_eq!(loo(Glove { left: 1, right: 2 }).values, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn one_player_is_its_stand_alone_value() {
        let v = loo(Airport { costs: vec![2.5] });
        assert_eq!((v.values, v.evaluations), (vec![2.5], 2));
    }

    #[test]
    fn a_short_shared_meter_is_a_clean_error() {
        let mut game = Tracked::new(Counting {
            game: Additive {
                values: vec![1.0; 6],
            },
            calls: 0,
        });
        let mut meter = Metered::new(&mut game, Some(6));
        let err = LeaveOneOut
            .estimate_metered(&mut meter, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ValuationError::BudgetTooSmall {
                    budget: 6,
                    needed: 7,
                    n: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(meter.evaluations(), 0);
        drop(meter);
        assert_eq!(game.into_inner().calls, 0);
    }
}
