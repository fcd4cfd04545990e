"""Bandit simulation throughput: 5 policies x 10 seeds as Ray tasks vs one process, same run.

    python benchmarks/bench_explore.py --out bench_explore.json [--horizon 300]

Prints a table and writes JSON: rounds/s of each mode and the parallel speed-up. Both modes
run the identical (policy, seed) grid on the same environment, so their results are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import ray
from rayrec.config import RayConfig
from rayrec.data.config import SyntheticWorldConfig
from rayrec.data.world import SyntheticWorld
from rayrec.explore.config import ExploreConfig
from rayrec.explore.environments import WorldEnv
from rayrec.explore.experiment import run_grid
from rayrec.explore.policies import make_policy
from rayrec.runtime import init_ray

POLICIES = ["greedy", "epsilon_greedy", "softmax", "ucb1", "thompson_beta"]
ALL_POLICIES = POLICIES + ["thompson_gaussian", "linucb", "lin_thompson", "neural_linear_ts", "uniform"]


def select_latency_us(env: WorldEnv, k: int, n: int = 300) -> dict[str, float]:
    """Median in-process ``select`` latency per policy (what the endpoint pays per request)."""
    rng = np.random.default_rng(0)
    reqs = [env.request(rng) for _ in range(n)]
    out = {}
    for name in ALL_POLICIES:
        pol = make_policy(name, ExploreConfig(), 0)
        times = []
        for r in reqs:
            t0 = time.perf_counter()
            s = pol.select(r.scores, k, r.features, r.arms, r.embeddings)
            times.append(time.perf_counter() - t0)
            pol.update(r.arms[s.indices], np.zeros(len(s.indices)), r.features[s.indices], r.scores[s.indices])
        out[name] = float(np.median(times) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--horizon", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    args = ap.parse_args()

    cfg = ExploreConfig(policies=POLICIES, seeds=args.seeds, horizon=args.horizon)
    env = WorldEnv(SyntheticWorld.generate(SyntheticWorldConfig()), cfg.num_candidates)
    rounds = len(POLICIES) * args.seeds * args.horizon
    started_here = not ray.is_initialized()
    if started_here and not os.environ.get("RAY_ADDRESS"):
        # a fresh local instance: never attach to another process's cluster on this machine
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    init_ray(RayConfig())
    try:
        run_grid(env, cfg.model_copy(update={"horizon": 2, "seeds": 2}), True)  # warm workers
        t0 = time.perf_counter()
        par = run_grid(env, cfg, parallel=True)
        t_par = time.perf_counter() - t0
        t0 = time.perf_counter()
        ser = run_grid(env, cfg, parallel=False)
        t_ser = time.perf_counter() - t0
        cpus = ray.cluster_resources().get("CPU", 0)
    finally:
        if started_here:
            ray.shutdown()
    latency = select_latency_us(env, cfg.slate_size)
    same = all(np.array_equal(a["clicks"], b["clicks"]) for a, b in zip(par, ser, strict=True))
    result = {
        "grid": f"{len(POLICIES)} policies x {args.seeds} seeds x {args.horizon} rounds",
        "rounds": rounds, "ray_cpus": cpus, "machine_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "one_process": {"wall_s": t_ser, "rounds_per_s": rounds / t_ser},
        "ray_tasks": {"wall_s": t_par, "rounds_per_s": rounds / t_par},
        "speedup": t_ser / t_par, "identical_results": same,
        "select_latency_us_median": latency,
        "latency_setup": f"{cfg.num_candidates} candidates, slate {cfg.slate_size}, in process",
    }
    print(f"{'mode':<12} {'wall s':>8} {'rounds/s':>10}")
    print(f"{'one process':<12} {t_ser:8.2f} {rounds / t_ser:10.0f}")
    print(f"{'Ray tasks':<12} {t_par:8.2f} {rounds / t_par:10.0f}")
    print(f"speed-up {t_ser / t_par:.2f}x on {cpus:.0f} Ray CPUs; identical results: {same}")
    print("select latency (median us, 50 candidates, k=5):",
          ", ".join(f"{k} {v:.0f}" for k, v in latency.items()))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
