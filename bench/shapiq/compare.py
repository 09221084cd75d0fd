#!/usr/bin/env python3
"""Measure shapiq's Shapley estimators on fedval's benchmark games (not run by CI).

The reference figures of ALGORITHMS.md 2.4 (Stratified SVARM vs shapiq at n = 14) come from
this script: it loads a game from fedval's JSON format, runs shapiq's public approximators at
the given budgets and seeds, and prints the mean squared error (mean over players, averaged
over seeds) against the exact Shapley values and the wall time per estimate.

Setup (outside the repository):
    python3 -m venv /tmp/shapiq-venv && /tmp/shapiq-venv/bin/pip install shapiq

Usage:
    /tmp/shapiq-venv/bin/python bench/shapiq/compare.py bench/shapiq/games/*.json \
        [--budgets 200 1000 4000] [--seeds 10] [--approximators SVARM PermutationSamplingSV]

Game JSON (one game per file; "exact_shapley_values" optional, else computed by brute force
over all 2^n coalitions, fine up to n ~ 20):
    {"type": "soum", "n_players": 14, "unanimity_coalitions": [[0, 3], [2, 5, 7]],
     "coefficients": [0.7, -0.2]}
    {"type": "weighted_voting", "n_players": 14, "weights": [...], "quota": 33}
    {"type": "glove", "n_players": 14, "left": 7}        players 0..left hold a left glove
    {"type": "airport", "n_players": 14, "costs": [1, 2, ..., 14]}
Seeds: shapiq's estimator gets random_state = seed for seed in 0..seeds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import shapiq


def value_function(spec: dict):
    """A vectorised v: bool array (k, n) -> float array (k,) for a game spec."""
    n = int(spec["n_players"])
    kind = spec["type"]
    if kind == "soum":
        carriers = np.zeros((len(spec["coefficients"]), n), dtype=bool)
        for k, members in enumerate(spec["unanimity_coalitions"]):
            carriers[k, members] = True
        coefficients = np.asarray(spec["coefficients"], dtype=float)

        def v(coalitions: np.ndarray) -> np.ndarray:
            # term k is carried iff no member of its carrier is missing
            missing = (~coalitions.astype(bool)).astype(np.int64) @ carriers.T.astype(np.int64)
            return (missing == 0).astype(float) @ coefficients

        return v
    if kind == "weighted_voting":
        weights = np.asarray(spec["weights"], dtype=float)
        quota = float(spec["quota"])
        return lambda c: (c.astype(float) @ weights >= quota).astype(float)
    if kind == "glove":
        left = int(spec["left"])
        return lambda c: np.minimum(c[:, :left].sum(1), c[:, left:].sum(1)).astype(float)
    if kind == "airport":
        costs = np.asarray(spec["costs"], dtype=float)
        return lambda c: np.where(c.astype(bool), costs, 0.0).max(1, initial=0.0)
    raise SystemExit(f"unknown game type {kind!r}")


def exact_shapley(n: int, v) -> np.ndarray:
    """Brute force: phi_i = sum_{S not containing i} w(|S|) (v(S u i) - v(S))."""
    masks = np.arange(1 << n, dtype=np.int64)
    coalitions = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
    values = v(coalitions)
    sizes = coalitions.sum(1)
    weights = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])
    phi = np.zeros(n)
    for i in range(n):
        without = ~coalitions[:, i]
        phi[i] = np.sum(weights[sizes[without]] * (values[masks[without] | (1 << i)] - values[without]))
    return phi


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("games", nargs="+", type=Path)
    parser.add_argument("--budgets", nargs="+", type=int, default=[200, 1000, 4000])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--approximators", nargs="+", default=["SVARM"])
    args = parser.parse_args()
    print(f"shapiq {importlib.metadata.version('shapiq')}")
    print(f"{'game':<28}{'approximator':<24}{'budget':>7}{'mse':>12}{'ms/estimate':>13}")
    for path in args.games:
        spec = json.loads(path.read_text())
        n = int(spec["n_players"])
        v = value_function(spec)
        if "exact_shapley_values" in spec:
            truth = np.asarray(spec["exact_shapley_values"], dtype=float)
        else:
            truth = exact_shapley(n, v)
        for name in args.approximators:
            cls = getattr(shapiq, name)
            for budget in args.budgets:
                errors, seconds = [], 0.0
                for seed in range(args.seeds):
                    approximator = cls(n=n, random_state=seed)
                    t0 = time.perf_counter()
                    result = approximator.approximate(budget=budget, game=v)
                    seconds += time.perf_counter() - t0
                    estimate = np.array([result[(i,)] for i in range(n)])
                    errors.append(np.mean((estimate - truth) ** 2))
                print(
                    f"{path.stem:<28}{name:<24}{budget:>7}{np.mean(errors):>12.3e}"
                    f"{1e3 * seconds / args.seeds:>13.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
