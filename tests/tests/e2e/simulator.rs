//! The demo scenario through the simulator library: an embedded server, ten clients,
//! one with shuffled labels and one with tiny data.

use fedval_sim::{SimConfig, SimOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scenario_ranks_the_noisy_client_last() {
    let opts = SimOptions {
        config: SimConfig::default(),
        server: None,
        admin_token: "sim-test".into(),
        progress: false,
    };
    let report = fedval_sim::run(&opts).await.expect("simulation runs");
    assert_eq!(report.rounds.len(), 20);
    assert_eq!(report.clients.len(), 10);
    assert!(
        report.final_test_accuracy > 0.8,
        "test accuracy {}",
        report.final_test_accuracy
    );
    let lowest = report
        .clients
        .iter()
        .min_by(|a, b| a.shapley.total_cmp(&b.shapley))
        .expect("clients");
    assert_eq!(lowest.behaviour, "noisy", "lowest value: {lowest:?}");
    // Exact valuation every round: efficiency holds per round.
    for r in &report.rounds {
        assert_eq!(r.valuation_method, "exact");
        let sum: f64 = r.values.values().sum();
        assert!((sum - (r.utility_full - r.utility_empty)).abs() < 1e-9);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    report.write(dir.path()).expect("report written");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("read"),
    )
    .expect("json");
    let clients = json["clients"].as_array().expect("clients array");
    assert_eq!(clients.len(), 10);
    for c in clients {
        assert!(c["name"].is_string() && c["behaviour"].is_string() && c["shapley"].is_number());
    }
    for file in ["rounds.csv", "clients.csv", "values.csv"] {
        let text = std::fs::read_to_string(dir.path().join(file)).expect("csv");
        assert!(text.lines().count() > 1, "{file} has rows");
    }
}
