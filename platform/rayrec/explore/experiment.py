"""Bandit experiments: many policies x many seeds as Ray tasks, reported as JSON, PNG, markdown.

One run = one policy and one seed for ``horizon`` rounds: a request arrives, the policy picks
a slate of ``slate_size`` from its candidates, Bernoulli clicks come back, the policy learns.
Per round we record clicks, the expected clicks of the slate (sum of true p) and of the best
slate among the candidates; pseudo-regret = best - expected. Policies with the same seed
see the same request stream. Bands are mean +- 1.96 standard errors over seeds.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import ray
from scipy import stats

from rayrec import metrics, storage
from rayrec.explore.arrivals import ArrivalsEnv, movielens_release_order
from rayrec.explore.config import ExploreConfig
from rayrec.explore.environments import (
    WorldEnv,
    fit_click_model,
    load_or_generate_world,
    replay,
    uniform_log,
)
from rayrec.explore.features import feature_settings
from rayrec.explore.policies import make_policy
from rayrec.runtime import init_ray
from rayrec.tracking import start_run


def simulate(env: WorldEnv, policy_name: str, cfg: ExploreConfig, seed: int, horizon: int) -> dict:
    """Run one policy online for ``horizon`` rounds; per-round arrays and slate metrics.

    In a world with arrivals also: the share of impressions that went to new items and, per
    released item, the rounds from its release to its first click (never clicked: censored).
    """
    policy = make_policy(policy_name, cfg, seed)
    req_rng = np.random.default_rng([seed, 0])  # same requests for every policy of a seed
    click_rng = np.random.default_rng([seed, 1])
    k = cfg.slate_size
    clicks, expected, best = np.zeros(horizon), np.zeros(horizon), np.zeros(horizon)
    ild, cats, nov, shown = np.zeros(horizon), np.zeros(horizon), np.zeros(horizon), set()
    new_shown = new_best = 0
    world = env.world
    first_click: dict[int, int] = {}
    for t in range(horizon):
        req = env.request(req_rng, t)
        slate = policy.select(req.scores, k, req.features, req.arms, req.embeddings, req.is_new,
                              with_propensities=False)  # regret needs none
        idx = slate.indices
        r = env.rewards(req, idx, click_rng)
        policy.update(req.arms[idx], r, req.features[idx], req.scores[idx],
                      None if req.is_new is None else req.is_new[idx])
        items = req.arms[idx]
        clicks[t], expected[t] = r.sum(), req.probs[idx].sum()
        best[t] = np.sort(req.probs)[::-1][: len(idx)].sum()
        ild[t] = metrics.intra_list_diversity(req.embeddings[idx])
        cats[t] = metrics.category_coverage(world.item_category[items].tolist())
        nov[t] = metrics.novelty(items, env.item_popularity, world.n_users)
        shown.update(items.tolist())
        if req.is_new is not None:
            new_shown += int(req.is_new[idx].sum())
            new_best += int(req.is_new[np.argsort(-req.probs, kind="stable")[: len(idx)]].sum())
            for item in items[r > 0]:
                first_click.setdefault(int(item), t)
    out = {
        "policy": policy_name, "seed": seed, "clicks": clicks, "regret": best - expected,
        "ctr": float(clicks.sum() / (horizon * k)), "catalog_coverage": len(shown) / world.n_items,
        "intra_list_diversity": float(ild.mean()), "categories_per_slate": float(cats.mean()),
        "novelty": float(nov.mean()),
    }
    arriving = getattr(env, "arriving", None)
    if arriving is not None and arriving.any():
        released = np.flatnonzero(arriving & (env.release < horizon))
        waits = np.array([first_click[i] - env.release[i] for i in released if i in first_click], float)
        out |= {
            "new_impression_share": new_shown / (horizon * k),
            "new_best_share": new_best / (horizon * k),  # of the best slates' slots: what there is to find
            "new_items_clicked": len(waits) / max(len(released), 1),
            "rounds_to_first_click": float(np.median(waits)) if len(waits) else float(horizon),
        }
    return out


def simulate_replay(env: WorldEnv, policy_name: str, cfg: ExploreConfig, seed: int, horizon: int) -> dict:
    """Replay one policy on its own seed's uniformly logged data (horizon matches expected)."""
    log = uniform_log(env, horizon * env.num_candidates, seed=seed)
    out = replay(make_policy(policy_name, cfg, seed), log)
    clicks = np.zeros(horizon)
    clicks[: min(horizon, out["matches"])] = out["rewards"][:horizon]
    return {
        "policy": policy_name, "seed": seed, "clicks": clicks, "regret": None,
        "ctr": out["ctr"], "matches": out["matches"],
        "catalog_coverage": len(set(out["shown"])) / env.world.n_items,
        "intra_list_diversity": 0.0, "categories_per_slate": 1.0,
        "novelty": float(np.mean([metrics.novelty([i], env.item_popularity, env.world.n_users)
                                  for i in out["shown"]])) if out["shown"] else float("nan"),
    }


@ray.remote(num_cpus=1)
def _run_remote(env, policy_name, cfg, seed, horizon, mode):
    fn = simulate_replay if mode == "replay" else simulate
    return fn(env, policy_name, cfg, seed, horizon)


SCALARS = ("ctr", "catalog_coverage", "intra_list_diversity", "categories_per_slate", "novelty")
ARRIVAL_SCALARS = ("new_impression_share", "new_best_share", "new_items_clicked", "rounds_to_first_click")


def run_grid(env: WorldEnv, cfg: ExploreConfig, parallel: bool, mode: str = "online") -> list[dict]:
    """Every (policy, seed) run, as Ray tasks when ``parallel`` else one after another here."""
    jobs = [(p, s) for p in cfg.policies for s in range(cfg.seeds)]
    if parallel:
        env_ref, cfg_ref = ray.put(env), ray.put(cfg)
        return ray.get([_run_remote.remote(env_ref, p, cfg_ref, s, cfg.horizon, mode) for p, s in jobs])
    fn = simulate_replay if mode == "replay" else simulate
    return [fn(env, p, cfg, s, cfg.horizon) for p, s in jobs]


def regret_slopes(regret: np.ndarray) -> dict[str, float]:
    """Mean regret per round over the first and the last quarter of the horizon (seeds x rounds),
    and their ratio: below 0.5 the cumulative regret bends (sublinear growth)."""
    q = max(regret.shape[1] // 4, 1)
    first, last = float(regret[:, :q].mean()), float(regret[:, -q:].mean())
    return {"first_quarter": first, "last_quarter": last, "ratio": last / first if first > 0 else float("nan")}


def paired_difference(runs: list[dict], policy: str, baseline: str, key: str = "regret") -> dict:
    """Cumulative ``key`` of ``policy`` minus ``baseline`` per seed (same requests per seed):
    per-seed values, mean, sd and a t-interval over seeds (95%)."""
    by = {(r["policy"], r["seed"]): float(np.sum(r[key])) for r in runs}
    seeds = sorted(s for p, s in by if p == policy and (baseline, s) in by)
    d = np.array([by[(policy, s)] - by[(baseline, s)] for s in seeds])
    if len(d) < 2:
        return {"per_seed": d.tolist(), "mean": float(d.mean()) if len(d) else float("nan")}
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"per_seed": d.tolist(), "mean": float(d.mean()), "sd": float(d.std(ddof=1)),
            "ci95": [float(d.mean() - half), float(d.mean() + half)]}


def _band(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 1.96 standard errors over the first axis."""
    se = x.std(axis=0, ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.zeros(x.shape[1:])
    return x.mean(axis=0), 1.96 * se


def summarise(runs: list[dict], cfg: ExploreConfig) -> dict:
    """Per-policy curves (cumulative clicks/regret, mean and band) and scalar metrics."""
    out = {}
    for name in cfg.policies:
        rs = [r for r in runs if r["policy"] == name]
        cum = np.cumsum(np.stack([r["clicks"] for r in rs]), axis=1)
        entry = {"cum_reward": [a.tolist() for a in _band(cum)]}
        if rs[0]["regret"] is not None:
            entry["cum_regret"] = [a.tolist() for a in _band(np.cumsum(np.stack([r["regret"] for r in rs]), axis=1))]
        if rs[0]["regret"] is not None:
            entry["regret_slope"] = regret_slopes(np.stack([r["regret"] for r in rs]))
        for key in (*SCALARS, *ARRIVAL_SCALARS):
            if key not in rs[0]:
                continue
            m, h = _band(np.array([[r[key]] for r in rs]))
            entry[key] = {"mean": float(m[0]), "ci95": float(h[0])}
        if "matches" in rs[0]:
            entry["replay_matches"] = float(np.mean([r["matches"] for r in rs]))
        out[name] = entry
    return out


def _plot(summary: dict, path, title: str) -> None:
    import matplotlib  # deferred: the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("cum_reward", "cum_regret") if any(k in s for s in summary.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, s in summary.items():
            if key not in s:
                continue
            m, h = np.asarray(s[key][0]), np.asarray(s[key][1])
            x = np.arange(1, len(m) + 1)
            ax.plot(x, m, label=name)
            ax.fill_between(x, m - h, m + h, alpha=0.2)
        ax.set_xlabel("round")
        ax.set_ylabel(key.replace("_", " "))
        ax.legend(fontsize=8)
        ax.set_title(f"{title}: {key.replace('_', ' ')} (mean +- 1.96 se)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _markdown(result: dict) -> str:
    c = result["config"]
    replayed = result["environment"] == "replay"
    n_cand = c["replay_candidates"] if replayed else c["num_candidates"]
    lines = [
        f"# Exploration experiment: {result['environment']}", "",
        f"{len(c['policies'])} policies x {c['seeds']} seeds, horizon {c['horizon']}, slate "
        f"{c['slate_size']} of {n_cand} candidates, diversity {c['diversity']} "
        f"(weight {c['diversity_weight']}). Mean +- 1.96 se over seeds. Wall time "
        f"{result['wall_s']:.1f} s ({'Ray tasks' if c['parallel'] else 'one process'}).", "",
    ]
    if replayed:
        lines += ["Unbiased offline replay (Li et al. 2011) on uniformly logged synthetic data "
                  f"(horizon x {n_cand} logged events per run); CTR = mean reward over matched "
                  "events; no regret (no counterfactual truth is used).", ""]
    if result.get("click_model"):
        lines += [f"Click model: `{result['click_model']['click_model']}`; labels: "
                  f"{result['click_model']['labels']}; train log-loss "
                  f"{result['click_model']['train_logloss']:.3f}, held-out (10%) "
                  f"{result['click_model']['heldout_logloss']:.3f}.", ""]
    lines += ["| policy | CTR | cum. regret | regret slope last/first quarter | catalog cov. | "
              "intra-list div. | categories/slate | novelty |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in result["policies"].items():
        reg = s.get("cum_regret")
        reg_txt = f"{reg[0][-1]:.1f} +- {reg[1][-1]:.1f}" if reg else "n/a (replay)"
        slope = s.get("regret_slope")
        slope_txt = f"{slope['ratio']:.2f}" if slope else "n/a"
        cells = [f"{s[k]['mean']:.3f} +- {s[k]['ci95']:.3f}" for k in SCALARS]
        lines.append(f"| {name} | {cells[0]} | {reg_txt} | {slope_txt} | " + " | ".join(cells[1:]) + " |")
    arrivals = [n for n, s in result["policies"].items() if "new_impression_share" in s]
    if arrivals:
        lines += ["", "New items (released during the horizon): share of impressions, share of the best "
                  "slates' slots that are new items (what there is to find), share of the released items "
                  "clicked at least once, median rounds from release to first click.", "",
                  "| policy | new-item impressions | new items in the best slates | new items clicked | "
                  "rounds to first click |", "|---|---|---|---|---|"]
        for name in arrivals:
            s = result["policies"][name]
            lines.append(f"| {name} | " + " | ".join(
                f"{s[k]['mean']:.3f} +- {s[k]['ci95']:.3f}" for k in ARRIVAL_SCALARS) + " |")
    if result.get("vs_greedy"):
        lines += ["", "Cumulative regret minus greedy's, paired per seed (same requests and clicks "
                  "stream per seed); 95% t-interval over seeds. Negative: less regret than greedy.", "",
                  "| policy | per seed | mean +- sd | 95% CI |", "|---|---|---|---|"]
        for name, d in result["vs_greedy"].items():
            if "ci95" not in d:
                continue
            lines.append(f"| {name} | {', '.join(f'{x:.1f}' for x in d['per_seed'])} | "
                         f"{d['mean']:.1f} +- {d['sd']:.1f} | [{d['ci95'][0]:.1f}, {d['ci95'][1]:.1f}] |")
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


MAX_CURVE_POINTS = 1000  # rounds logged per curve (evenly spaced, the last included)


def _track(cfg, result: dict) -> None:
    """One MLflow run (:mod:`rayrec.tracking`): the explore section as params; per policy the
    mean cumulative reward and regret over seeds per round (``cum_reward/<policy>``, step =
    round) and the scalar metrics (``ctr/<policy>``, ...); the click model's fit; the report."""
    with start_run(cfg, "bandit", {"explore": result["config"], "environment": result["environment"]}) as run:
        horizon = len(next(iter(result["policies"].values()))["cum_reward"][0])
        rounds = np.unique(np.linspace(1, horizon, min(horizon, MAX_CURVE_POINTS)).round().astype(int))
        curves = {f"{key}/{name}": np.asarray(s[key][0])[rounds - 1]
                  for name, s in result["policies"].items() for key in ("cum_reward", "cum_regret") if key in s}
        run.log_series(curves, rounds.tolist())
        run.log_metrics({f"{k}/{name}": s[k]["mean"] for name, s in result["policies"].items() for k in SCALARS}
                        | {f"click_model/{k}": v for k, v in (result["click_model"] or {}).items()}
                        | {"wall_s": result["wall_s"]})
        for path in result["files"].values():
            run.log_artifacts(path, "report")


def build_environment(cfg) -> tuple[WorldEnv, dict | None]:
    """The environment named by ``cfg.explore.environment`` (replay uses the synthetic world;
    the two arrivals worlds release items during the horizon, ``arrivals.py``)."""
    ex = cfg.explore
    info, order = None, None
    features = feature_settings(ex)
    if ex.environment.startswith("semi_synthetic"):
        path = ex.ratings_path or cfg.data.path
        if path is None:
            raise ValueError(f"{ex.environment} needs explore.ratings_path (or data.path) -> ratings.csv")
        p = Path(path)
        ratings = p / "ratings.csv" if p.is_dir() else p
        world, info = fit_click_model(ratings, n_items=ex.semi_synthetic_items)
        item_ids = np.asarray(info.pop("item_ids"))
        if ex.environment == "semi_synthetic":
            return WorldEnv(world, ex.num_candidates, ex.candidates, ex.score_noise, "semi_synthetic",
                            features), info
        order = movielens_release_order(ratings, item_ids)  # the items first rated last arrive
    else:
        world = load_or_generate_world(cfg)
    if ex.environment.endswith("arrivals"):
        return ArrivalsEnv(world, ex.num_candidates, ex.horizon, ex.arrival_fraction, order, ex.new_item_gap,
                           ex.text_noise, ex.score_noise, ex.environment, features, ex.new_item_age,
                           arrival_window=ex.arrival_window), info
    n_cand = ex.replay_candidates if ex.environment == "replay" else ex.num_candidates
    return WorldEnv(world, n_cand, ex.candidates, ex.score_noise, ex.environment, features), info


def run_experiment(cfg) -> dict:
    """Run the configured bandit experiment; writes results.json, curves.png, report.md."""
    ex = cfg.explore
    env, click_model = build_environment(cfg)
    if ex.environment == "replay" and ex.slate_size != 1:
        ex = ex.model_copy(update={"slate_size": 1})  # replay is single-slot (Li et al. 2011)
    if ex.parallel:
        init_ray(cfg.ray)
    t0 = time.perf_counter()
    runs = run_grid(env, ex, ex.parallel, "replay" if ex.environment == "replay" else "online")
    wall = time.perf_counter() - t0
    files = {k: storage.join(cfg.explore_dir, f) for k, f in
             (("json", "results.json"), ("plot", "curves.png"), ("report", "report.md"))}
    result = {
        "environment": env.name, "config": ex.model_dump(mode="json"), "wall_s": wall,
        "click_model": click_model, "policies": summarise(runs, ex), "files": files,
        "vs_greedy": {p: paired_difference(runs, p, "greedy") for p in ex.policies
                      if p != "greedy" and "greedy" in ex.policies and runs[0]["regret"] is not None},
    }
    storage.write_text(files["json"], json.dumps(result, indent=1))
    png = io.BytesIO()
    _plot(result["policies"], png, env.name)
    storage.write_bytes(files["plot"], png.getvalue())
    storage.write_text(files["report"], _markdown(result))
    _track(cfg, result)
    return result
