//! Estimator overhead per estimate (criterion): every registry estimator at n = 14,
//! budget 4096, on a SOUM game whose utility table is precomputed (a
//! [`TabulatedGame`]: one memory load per evaluation, so the time is the estimator's);
//! and exact Shapley values at n = 14 and n = 20 on the same kind of table.
//!
//! Run: `cargo bench -p fedval-core --bench estimators -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fedval_core::valuation::{EstimatorSpec, GameSpec, TabulatedGame};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The benchmark's SOUM game at `n` players, tabulated.
fn soum_table(n: usize) -> TabulatedGame {
    let mut game = GameSpec::random_soum(n, 42)
        .build()
        .expect("the generated SOUM game is valid");
    TabulatedGame::from_game(&mut game).expect("n <= 25")
}

fn estimators(c: &mut Criterion) {
    let mut game = soum_table(14);
    let mut group = c.benchmark_group("estimate_n14_b4096");
    for spec in EstimatorSpec::benchmark_set() {
        // Estimators still being written return an error: skip them rather than time it.
        let mut probe = ChaCha8Rng::seed_from_u64(0);
        if let Err(e) = spec.estimate(4096, &mut game, &mut probe) {
            eprintln!("skipping {spec}: {e}");
            continue;
        }
        group.bench_function(BenchmarkId::from_parameter(spec.name()), |b| {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            b.iter(|| black_box(spec.estimate(4096, &mut game, &mut rng)))
        });
    }
    group.finish();
}

fn exact(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact_shapley");
    group.sample_size(10);
    for n in [14, 20] {
        let mut game = soum_table(n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            b.iter(|| black_box(EstimatorSpec::Exact.estimate(0, &mut game, &mut rng)))
        });
    }
    group.finish();
}

criterion_group!(benches, estimators, exact);
criterion_main!(benches);
