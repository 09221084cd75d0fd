//! End-to-end tests of fedval over real gRPC on loopback (one integration binary).
//!
//! Every test starts a real server on `127.0.0.1:0` through `fedval_server::run`, and
//! talks to it with the client SDK or with raw generated clients for malformed input.

mod e2e {
    pub mod support;

    mod bad_input;
    mod bandit;
    mod estimators;
    mod fact;
    mod fair_reward;
    mod federation_flow;
    mod large_model;
    mod ledger;
    mod many_federations;
    mod reputation;
    mod restart;
    mod simulator;
    mod upload_limits;
    mod vertical;
}
