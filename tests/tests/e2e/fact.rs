//! FACT over gRPC: four clients enroll in a FACT federation reporting their cost per
//! data point, a cost of 0 or NaN is refused with INVALID_ARGUMENT saying what to send,
//! every train task carries the client's required contribution m*, and after the rounds
//! the ledger holds a penalty for every participant of every round and a prize only for
//! the sandwich winners; the client that claims fewer points than required pays more than
//! it would at m*; WatchEvents delivers each round's ledger entries.

use fedval_client::{ClientError, FederationClient, Task, connect};
use fedval_proto::v1 as pb;
use fedval_server::store::Store;

use super::support::*;

const FED: &str = "fact";
const ROUNDS: u64 = 2;
const DIM: usize = 9;
/// Required contributions of the four clients; the third claims half of its own.
const REQUIRED: [f64; 4] = [10.0, 20.0, 30.0, 40.0];
const SHORT: usize = 2;

/// The cost whose m* is `m` under offset 1.
fn cost_for(m: f64) -> f64 {
    1.0 / (2.0 * m * m)
}

fn config() -> pb::FederationConfig {
    assert_eq!(tiny_model().num_params(), DIM);
    pb::FederationConfig {
        fact: Some(pb::FactConfig {
            offset: Some(1.0),
            alpha: Some(1.5),
            prize_factor: Some(3.0),
            remainder: "random_extra".into(),
            seed: Some(17),
        }),
        ..model_federation(FED, &tiny_model(), ROUNDS, 4, 5)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fact_penalises_everyone_rewards_winners_and_records_it() {
    let server = start_server(Store::memory()).await;
    let url = server.url();
    let mut admin = admin(&url).await;
    create_federation(&mut admin, config()).await;
    let mut events = watch(&mut admin, FED).await;

    // No cost (the plain enrollment sends 0) and a NaN cost are refused, actionably.
    let channel = connect(&url).await.expect("connect");
    let err = FederationClient::enroll(channel, FED, SECRET, "costless", 10)
        .await
        .expect_err("a FACT federation needs a cost");
    match &err {
        ClientError::InvalidArgument(m) => assert!(
            m.contains("cost_per_point must be a finite number > 0 in a FACT federation")
                && m.contains("got 0"),
            "{m}"
        ),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let mut raw = raw_coordinator(&url).await;
    let status = raw
        .enroll(pb::EnrollRequest {
            cost_per_point: f64::NAN,
            ..enroll_request(FED, "nan", 10)
        })
        .await
        .expect_err("NaN cost");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("your marginal cost per data point")
            && status.message().contains("got NaN"),
        "{}",
        status.message()
    );

    let mut clients = Vec::new();
    for (k, m) in REQUIRED.iter().enumerate() {
        let channel = connect(&url).await.expect("connect");
        clients.push(
            FederationClient::enroll_with_cost(
                channel,
                FED,
                SECRET,
                &format!("c{k}"),
                100,
                cost_for(*m),
            )
            .await
            .expect("enroll"),
        );
    }
    let ids: Vec<String> = clients.iter().map(|c| c.client_id().to_string()).collect();
    let claim = |k: usize| {
        let m = REQUIRED[k];
        if k == SHORT { m / 2.0 } else { m }
    };
    for round in 1..=ROUNDS {
        for (k, client) in clients.iter_mut().enumerate() {
            let task = next_task(client, round).await;
            let Task::Train(t) = task else {
                panic!("round {round}, client {k}: unexpected {task:?}");
            };
            let required = t.required_points.expect("FACT tasks carry m*");
            assert!(
                (required - REQUIRED[k]).abs() < 1e-9,
                "client {k}: m* = {required}"
            );
            let delta = vec![0.01 * (k as f32 + 1.0); DIM];
            client
                .upload_update(t.round, t.model_version, &delta, claim(k) as u64, &[])
                .await
                .expect("upload");
        }
    }

    // One ledger event per round, in round order; then the federation ends.
    let mut announced: Vec<pb::LedgerRecorded> = Vec::new();
    while let Some(event) = events.message().await.expect("events") {
        match event.kind {
            Some(pb::federation_event::Kind::LedgerRecorded(l)) => announced.push(l),
            Some(pb::federation_event::Kind::Ended(_)) => break,
            _ => {}
        }
    }
    let ledger = list_ledger(&mut admin, FED).await;
    assert_eq!(
        announced.iter().map(|l| l.round).collect::<Vec<_>>(),
        [1, 2]
    );
    let rounds = list_rounds(&mut admin, FED).await;
    assert_eq!(rounds.len(), ROUNDS as usize);
    for (r, l) in rounds.iter().zip(&announced) {
        let stored: Vec<&pb::LedgerEntry> = ledger
            .entries
            .iter()
            .filter(|e| e.round == r.round)
            .collect();
        assert_eq!(
            l.entries.iter().collect::<Vec<_>>(),
            stored,
            "round {}: the event carries the stored entries",
            r.round
        );
        let penalties: Vec<&&pb::LedgerEntry> =
            stored.iter().filter(|e| e.kind == "penalty").collect();
        let mut paid: Vec<&str> = penalties.iter().map(|e| e.client_id.as_str()).collect();
        paid.sort_unstable();
        assert_eq!(
            paid,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "everyone pays"
        );
        for e in &stored {
            assert_eq!(e.mechanism, "fact");
            let won = e.inputs["won"] == 1.0;
            if e.kind == "prize" {
                assert!(won && e.amount > 0.0, "{e:?}");
                assert_eq!(e.amount, 3.0 * e.inputs["share"]);
            } else {
                assert_eq!(e.kind, "penalty");
                let has_prize = stored
                    .iter()
                    .any(|p| p.kind == "prize" && p.client_id == e.client_id);
                assert_eq!(has_prize, won && e.inputs["share"] > 0.0, "{e:?}");
            }
        }
        let winners = penalties.iter().filter(|e| e.inputs["won"] == 1.0).count();
        assert!(
            winners >= 1,
            "round {}: someone sits in the middle",
            r.round
        );
        assert!(
            winners < penalties.len(),
            "round {}: not everyone wins",
            r.round
        );
        // The round's metrics sum what it recorded.
        let sum = |kind: &str| -> f64 {
            stored
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.amount)
                .sum()
        };
        assert!((metric(r, "fact_penalties") - sum("penalty")).abs() < 1e-15);
        assert!((metric(r, "fact_prizes") - sum("prize")).abs() < 1e-15);
        assert_eq!(metric(r, "fact_settled"), 4.0);
        // The short client pays lambda (kappa + m* - m)^2 > lambda kappa^2, its price at m*.
        let short = penalties
            .iter()
            .find(|e| e.client_id == ids[SHORT])
            .expect("the short client pays");
        let (lambda, kappa, m_star) = (
            short.inputs["lambda"],
            short.inputs["kappa"],
            short.inputs["required_m"],
        );
        assert_eq!(short.inputs["claimed_m"], 15.0);
        let at_m_star = lambda * kappa * kappa;
        let expected = lambda * (kappa + m_star - 15.0).powi(2);
        assert!((short.amount - expected).abs() <= 1e-12 * expected);
        assert!(short.amount > at_m_star, "{} <= {at_m_star}", short.amount);
    }
    let totals: f64 = ledger.totals.iter().map(|t| t.penalties).sum();
    assert!(
        (totals
            - rounds
                .iter()
                .map(|r| metric(r, "fact_penalties"))
                .sum::<f64>())
        .abs()
            < 1e-12
    );
}

/// The shipped misreport scenario end to end over gRPC: every client is settled in every
/// round, each trains and claims what its behaviour says (the free rider claims its
/// ceil(m*) after training on 20% of it, the shirker claims the 20% it trained), the
/// shirker pays by far the largest penalty, prizes go only with wins, and the two
/// clients that train on 20% of their data have the two lowest Shapley values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_misreport_scenario_accounts_for_every_client() {
    let config = fedval_sim::scenario::shipped("fact_misreport").expect("shipped");
    let report = simulate(config).await;
    let fact = report.fact.as_ref().expect("a FACT run reports FACT");
    assert_eq!((fact.settled_rounds, fact.skipped_rounds), (20, 0));
    let by = |label: &str| {
        fact.rows
            .iter()
            .find(|r| r.behaviour == label)
            .unwrap_or_else(|| panic!("no {label} row"))
    };
    let (rider, shirker) = (by("free_rider 20%"), by("shirker 20%"));
    assert_eq!(rider.claimed, rider.required_m.ceil() as u64);
    assert_eq!(
        rider.trained,
        (0.2 * rider.required_m.ceil()).ceil() as usize
    );
    assert_eq!(shirker.claimed, shirker.trained as u64);
    let truthful: Vec<_> = fact
        .rows
        .iter()
        .filter(|r| r.behaviour == "truthful")
        .collect();
    assert_eq!(truthful.len(), 6);
    for r in &fact.rows {
        assert_eq!((r.rounds, r.settled_rounds), (20, 20), "{}", r.name);
        assert_eq!(r.prizes > 0.0, r.wins > 0, "{}", r.name);
        assert!((r.net - (r.prizes - r.penalties - r.data_cost)).abs() < 1e-12);
        if r.behaviour == "truthful" || r.behaviour.starts_with("misreport") {
            assert_eq!(r.claimed, r.required_m.ceil() as u64, "{}", r.name);
            assert!(
                (r.reported_cost / r.true_cost - 1.0).abs() < 1e-12 || r.behaviour != "truthful"
            );
        }
        if r.name != shirker.name {
            assert!(
                shirker.penalties > 5.0 * r.penalties,
                "{} vs {}",
                shirker.name,
                r.name
            );
        }
    }
    let lowest_truthful = truthful
        .iter()
        .map(|r| r.shapley)
        .fold(f64::INFINITY, f64::min);
    assert!(rider.shapley < lowest_truthful && shirker.shapley < lowest_truthful);
    let table = report.summary();
    assert!(table.contains("mean net by behaviour"), "{table}");
}
