//! fedval-bench: the valuation benchmark of fedval.
//!
//! - [`runner`]: one estimator over seeds on a tabulated game (MSE, evaluations, time
//!   per call without the utility time);
//! - [`table`]: the full grid (SOUM, glove, airport, weighted voting; several n and
//!   budgets) written as CSV and markdown, and the comparison with shapiq's figures;
//! - [`game_cmd`]: every estimator on one JSON game file.
//!
//! Every run is deterministic by seed, so the MSE columns reproduce exactly.

pub mod game_cmd;
pub mod runner;
pub mod table;
