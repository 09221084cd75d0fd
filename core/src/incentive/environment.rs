//! The contexts and rewards a federated-bandit client acts on.
//!
//! A client's environment is its own (its users, its data); the client SDK's bandit agent only
//! needs the arm set at each step and the reward of the arm it played. Simulated environments
//! also know the best arm, so they report the pseudo-regret of each step.

/// What playing an arm returned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Feedback {
    /// The observed reward (finite).
    pub reward: f64,
    /// Simulated environments: the step's pseudo-regret (best expected reward minus the played
    /// arm's); `None` when unknown (a real deployment).
    pub regret: Option<f64>,
}

/// One client's bandit environment.
pub trait Environment: Send {
    /// Context dimension `d` of every arm's feature vector.
    fn dim(&self) -> usize;
    /// The arm set (feature vectors of length [`Environment::dim`]) seen at global step `step`.
    fn arms(&mut self, step: u64) -> Vec<Vec<f64>>;
    /// Plays arm `arm` of the last arm set of `step` and returns its feedback.
    fn play(&mut self, step: u64, arm: usize) -> Feedback;
}
