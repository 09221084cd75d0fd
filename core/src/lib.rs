//! fedval-core: the pure, I/O-free algorithms of fedval.
//!
//! Nothing here knows gRPC, tokio or storage: every function is a plain function of
//! its inputs (and an explicit seeded RNG), so the server, the client SDK, the
//! simulator and benchmarks all reuse it.
//!
//! # Layout
//! - [`tensor`]: flat f32 tensors on the wire: little-endian bytes, chunking, checksums.
//! - [`data`]: labelled data sets, CSV loading, the shipped UCI sets, partitioners.
//! - [`model`]: the built-in models (multinomial logistic regression, a one-hidden-layer
//!   MLP) over flat parameter vectors, with seeded mini-batch SGD.
//! - [`aggregate`]: combining client updates: FedAvg and the robust aggregators
//!   (coordinate-wise median, trimmed mean, Krum, Multi-Krum, norm clipping).
//! - [`incentive`]: truthful incentive mechanisms: FACT (free-riding penalty and the
//!   sandwich competition) and Truth-FedBan (truthful selection and payments for bandits).
//! - [`reputation`]: RFFL reputations, removals and sparsified rewards; fair yet
//!   asymptotically equal reward selection (no validation set needed).
//! - [`valuation`]: cooperative games and Shapley value estimators, including the
//!   per-round federated-learning game.
//! - [`vertical`]: vertical FL (parties hold column blocks, the server holds labels):
//!   the label holder's objective, party embedding models, column splits and reference
//!   synchronous/asynchronous training loops.

pub mod aggregate;
pub mod data;
pub mod incentive;
mod linalg;
pub mod model;
pub mod reputation;
pub mod seed;
pub mod tensor;
pub mod valuation;
pub mod vertical;
