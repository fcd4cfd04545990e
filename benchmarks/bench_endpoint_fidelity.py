"""Does the endpoint serve the quality evaluation measured, before and after it learns from traffic?

    python benchmarks/bench_endpoint_fidelity.py --config configs/ml-latest-small.yaml \
        [--set KEY=VALUE ...] --users 200 --requests 1000 --out fidelity.json

On a run directory where `rayrec main` (or preprocess, train, evaluate) has run: starts the
endpoint (`rayrec serve`'s app, as its own app ``rayrec_fidelity`` whose policy starts fresh and
learns into ``<run_dir>/serve/fidelity/``, never the state `rayrec serve` loads), asks it for each evaluated user's greedy top-10 (no
diversity), scores them against the same held-out items as `rayrec evaluate` scored the served
system, then sends ``--requests`` simulated greedy requests with feedback (clicks from the click
model, never on a test item), has the policy learn them (and the measurement's own slates) at
once, and scores again (``rayrec.recipes.fidelity``). Writes JSON and prints the
two ratios; #22's bar is >= 0.95 for both.
"""

from __future__ import annotations

import argparse
import json

from rayrec.config import load_config
from rayrec.recipes.fidelity import measure_fidelity
from rayrec.runtime import init_ray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides |= {"serve.policy_sync_s": 0.5, "serve.app_name": "rayrec_fidelity"}
    cfg = load_config(args.config, overrides)
    # Simulated traffic learns into a state of its own, never the one `rayrec serve` loads.
    cfg = cfg.model_copy(update={"explore": cfg.explore.model_copy(update={
        "state_path": cfg.path("serve", "fidelity", "bandit_state.npz")})})
    init_ray(cfg.ray)
    out = measure_fidelity(cfg, n_requests=args.requests, max_users=args.users)
    out["config"] = {"file": args.config, "overrides": overrides, "run_dir": cfg.run_dir}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    for when in ("before", "after"):
        r = out[when]
        print(f"{when:6s} {r['users']} users ({r['model']}): endpoint NDCG@10 {r['endpoint_ndcg@10']:.4f} vs "
              f"evaluate {r['offline_ndcg@10']:.4f} = {r['ratio']:.3f}; identical top-10 for "
              f"{r['same_top_k_share']:.0%}")
    t = out["traffic"]
    print(f"traffic: {t['requests']} requests, {t['clicks']} clicks, {t['errors']} errors, "
          f"{t['degraded']} degraded, {t['seconds']:.0f} s")


if __name__ == "__main__":
    main()
