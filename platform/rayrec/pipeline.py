"""The main job: from raw logs to a served, evaluated, exploring recommender, in one run.

preprocess → index → train-retriever → train → evaluate → serve + sample traffic + feedback → bandit
experiment → off-policy estimate from the endpoint's own log → report. Each stage reuses
its earlier result when its config is unchanged (``--rebuild`` forces every stage). Stages
after training degrade visibly: a failure is recorded in the report and the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayrec.config import RayrecConfig
from rayrec.runtime import init_ray
from rayrec.stages import StageRunner

log = logging.getLogger("rayrec")


def _plain(obj: Any) -> Any:
    return asdict(obj) if is_dataclass(obj) else obj


def run_main(cfg: RayrecConfig, rebuild: bool = False) -> dict[str, Any]:
    """Run every stage on ``cfg`` and write ``<run_dir>/report.md``; returns a summary."""
    from rayrec.data.pipeline import run_preprocess
    from rayrec.evaluation.evaluate import run_evaluation
    from rayrec.explore.experiment import run_experiment
    from rayrec.retrieval.index import build_index
    from rayrec.seqrec.trainer import run_retriever_training
    from rayrec.train.trainer import run_training

    started = time.perf_counter()
    init_ray(cfg.ray)
    run_dir = Path(cfg.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    stages = StageRunner(cfg, rebuild=rebuild)
    data_cfg = ("data", "preprocess")

    manifest = stages.run("preprocess", lambda: run_preprocess(cfg), data_cfg,
                          outputs=[Path(cfg.data_dir) / "manifest.json"])
    stages.run("index", lambda: str(build_index(cfg)), (*data_cfg, "retrieval", "model"),
               outputs=[cfg.index_dir])
    if cfg.retriever.enabled:
        stages.run("train-retriever", lambda: run_retriever_training(cfg), (*data_cfg, "retriever"),
                   outputs=[cfg.retriever_model_dir, cfg.retriever_index_dir])
    trained = stages.run("train", lambda: _plain(run_training(cfg)),
                         (*data_cfg, "model", "train", "retriever"),
                         outputs=[cfg.checkpoint_dir])
    evaluation = stages.run(
        "evaluate", lambda: run_evaluation(cfg),
        (*data_cfg, "model", "train", "retrieval", "retriever", "evaluate"),
        outputs=[cfg.eval_dir], required=False,
    )
    serving = stages.run("serve", lambda: serve_and_simulate(cfg), reusable=False, required=False)
    bandit = stages.run("bandit", lambda: run_experiment(cfg), (*data_cfg, "explore"),
                        outputs=[cfg.explore_dir], required=False)
    ope = stages.run("off-policy", lambda: estimate_from_event_log(cfg), reusable=False, required=False)

    total = time.perf_counter() - started
    report = write_report(cfg, stages, manifest, trained, evaluation, serving, bandit, ope, total)
    print(f"\nrayrec main finished in {total:.0f}s. Report: {report}", flush=True)
    return {"report": str(report), "seconds": round(total, 1),
            "stages": [{"name": r.name, "seconds": round(r.seconds, 1), "reused": r.reused,
                        "error": r.error} for r in stages.records]}


# --- serving stage ------------------------------------------------------------------------

def serve_and_simulate(cfg: RayrecConfig, n_requests: int | None = None) -> dict[str, Any]:
    """Start the endpoint, send the sample requests, replay simulated traffic with feedback, stop.

    Feedback comes from the synthetic world's true click probabilities when the data is
    synthetic, else from the users' held-out items (a click when the shown item is one).
    """
    import httpx

    from rayrec.data import store
    from rayrec.serving.control import start_app, stop_app

    n_requests = cfg.serve.simulate_requests if n_requests is None else n_requests
    url = start_app(cfg)
    samples: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            users = store.load_users(cfg.data_dir)
            known = str(users["user_id"].iloc[0])
            samples["known_user"] = _post(http, "/recommend", {"user_id": known, "k": 5})
            samples["new_user_query"] = _post(
                http, "/recommend", {"query": "funny space adventures for kids", "k": 5})
            samples["exploration"] = _post(
                http, "/recommend", {"user_id": known, "k": 5, "policy": "epsilon_greedy",
                                     "diversity": 0.3})
            first = samples["known_user"]["items"][0]["item_id"] if samples["known_user"].get("items") else None
            if first is not None:
                samples["feedback"] = _post(http, "/feedback", {
                    "request_id": samples["known_user"]["request_id"], "item_id": first, "reward": 1.0})
            traffic = _simulate_traffic(cfg, http, users, n_requests)
    finally:
        stop_app(cfg)
    return {"url": url, "samples": samples, "traffic": traffic}


def _post(http, path: str, body: dict) -> dict:
    response = http.post(path, json=body)
    if response.status_code >= 400 or "json" not in response.headers.get("content-type", ""):
        raise RuntimeError(f"POST {path} {body} -> {response.status_code}: {response.text[:500]}")
    out = response.json()
    log.info("POST %s %s -> %d (%s)", path, body, response.status_code,
             ", ".join(i["title"] for i in out.get("items", [])[:3]) or "ok")
    return out


def _click_model(cfg: RayrecConfig):
    """(user_id, item_id) -> click probability for simulated feedback."""
    from rayrec.data import store
    from rayrec.data.world import SyntheticWorld

    world_dir = Path(cfg.data_dir) / "world"
    if (world_dir / "world.npz").is_file():
        world = SyntheticWorld.load(world_dir)
        return lambda u, i: float(world.click_probability(int(u), int(i)))
    items = store.load_items(cfg.data_dir)
    hist = store.load_histories(cfg.data_dir)
    users = store.load_users(cfg.data_dir)
    raw_item = items["item_id"].astype(str).to_numpy()
    held_out: dict[str, set[str]] = {}
    for uid, v, t in zip(users.set_index("user_idx").loc[hist["user_idx"], "user_id"].astype(str),
                         hist["valid_item"], hist["test_item"], strict=True):
        held_out[uid] = {raw_item[x] for x in (v, t) if x >= 0}
    return lambda u, i: 1.0 if str(i) in held_out.get(str(u), set()) else 0.02


def _simulate_traffic(cfg: RayrecConfig, http, users, n_requests: int) -> dict[str, Any]:
    """Logged traffic for off-policy evaluation.

    Each simulated user gets a slate from the stochastic logging policy (logged with its
    propensities; clicks drawn from the click model are posted as feedback) and, for the
    counterfactual, the greedy slate the same endpoint would have shown. The greedy slates and
    their expected clicks under the click model are saved for :func:`estimate_from_event_log`.
    """
    rng = np.random.default_rng(0)
    click_p = _click_model(cfg)
    policy, k = cfg.serve.simulate_policy, cfg.explore.slate_size
    shown = clicks = degraded = 0
    latencies, counterfactual = [], {}
    for _ in range(n_requests):
        uid = str(users["user_id"].iloc[rng.integers(len(users))])
        t0 = time.perf_counter()
        r = http.post("/recommend", json={"user_id": uid, "k": k, "policy": policy})
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            continue
        body = r.json()
        degraded += bool(body["degraded"])
        for item in body["items"]:
            shown += 1
            if rng.random() < click_p(uid, item["item_id"]):
                clicks += 1
                http.post("/feedback", json={"request_id": body["request_id"],
                                             "item_id": item["item_id"], "reward": 1.0})
        g = http.post("/recommend", json={"user_id": uid, "k": k, "policy": "greedy"})
        if g.status_code == 200:
            greedy_items = [i["item_id"] for i in g.json()["items"]]
            counterfactual[body["request_id"]] = {
                "greedy": greedy_items,
                "greedy_expected_clicks": float(sum(click_p(uid, i) for i in greedy_items)),
                "logged_expected_clicks": float(sum(click_p(uid, i["item_id"]) for i in body["items"])),
            }
    out = Path(cfg.run_dir).expanduser().resolve() / "serve"
    out.mkdir(parents=True, exist_ok=True)
    (out / "counterfactual.json").write_text(json.dumps({"policy": policy, "requests": counterfactual}))
    lat = np.asarray(latencies) * 1000
    return {"requests": n_requests, "policy": policy, "impressions": shown, "clicks": clicks,
            "ctr": clicks / max(shown, 1), "degraded": degraded,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))}
            if len(lat) else {}}


# --- off-policy estimate from the endpoint's own log ---------------------------------------

def estimate_from_event_log(cfg: RayrecConfig) -> dict[str, Any]:
    """IPS / SNIPS estimates, from the endpoint's impression + feedback log, of the value
    (clicks per slate) of the logging policy and of the greedy policy.

    Target propensities follow the log's sequential convention (probability of the item at its
    slot given the earlier slots): greedy's is 1 when the logged slot holds the item greedy put
    there (its slate for the same request, saved by the traffic simulation), else 0. Ground truth from the click model is reported beside each.
    """
    from rayrec.explore.ope import evaluate, join_events
    from rayrec.serving.eventlog import read_events

    cf_path = Path(cfg.run_dir).expanduser().resolve() / "serve" / "counterfactual.json"
    if not cf_path.is_file():
        raise FileNotFoundError(f"{cf_path} is missing: run the serve stage first")
    cf = json.loads(cf_path.read_text())
    impressions, feedback = read_events(cfg.event_log_dir)
    shown = join_events(impressions, feedback)
    shown = shown[(shown["policy"] == cf["policy"]) & shown["request_id"].isin(cf["requests"])].copy()
    if shown.empty:
        raise RuntimeError(f"the event log at {cfg.event_log_dir} holds no {cf['policy']} impressions")
    shown = shown.sort_values(["request_id", "position"])
    greedy_at = {(rid, pos): item for rid, c in cf["requests"].items() for pos, item in enumerate(c["greedy"])}
    targets = {
        "logging": shown["propensity"].to_numpy(),
        "greedy": np.array([float(greedy_at.get((r, p)) == str(i)) for r, p, i in
                            zip(shown["request_id"], shown["position"], shown["item_id"], strict=True)]),
    }
    truth = {
        "logging": float(np.mean([c["logged_expected_clicks"] for c in cf["requests"].values()])),
        "greedy": float(np.mean([c["greedy_expected_clicks"] for c in cf["requests"].values()])),
    }
    results: dict[str, Any] = {"logging_policy": cf["policy"], "decisions": int(shown["request_id"].nunique())}
    for name, target in targets.items():
        est = evaluate(shown.assign(target_propensity=target), n_boot=200, seed=0)
        results[name] = {"estimates": est, "true_value": truth.get(name)}
    return results


# --- report --------------------------------------------------------------------------------

def _embed(md: Path, run_dir: Path) -> str:
    """A stage's markdown report, with its relative image links rebased onto ``run_dir``."""
    import re

    rel = md.parent.relative_to(run_dir) if md.parent.is_relative_to(run_dir) else md.parent
    return re.sub(r"\]\((?!/|https?:)([^)]+\.png)\)", lambda m: f"]({rel}/{m.group(1)})", md.read_text())


def write_report(cfg: RayrecConfig, stages: StageRunner, manifest, trained, evaluation, serving,
                 bandit, ope, total_s: float) -> Path:
    """Markdown report of the run, linking the stage reports and plots."""
    run_dir = Path(cfg.run_dir).expanduser().resolve()
    lines = ["# rayrec main job report", "",
             f"Run directory: `{run_dir}`; total {total_s:.0f}s.", "",
             "| stage | seconds | status |", "|---|---:|---|"]
    for r in stages.records:
        status = "reused" if r.reused else ("FAILED: " + r.error if r.error else "ok")
        lines.append(f"| {r.name} | {r.seconds:.1f} | {status} |")
    if evaluation and evaluation.get("protocol", {}).get("candidates") == "full":
        p = evaluation["protocol"]
        ranked = sorted(evaluation["models"].items(), key=lambda kv: -kv[1]["ndcg@10"])
        lines += ["", f"**Full-catalog NDCG@10** ({p['split']} split, {p['users']} users, every unseen "
                  "item ranked): " + ", ".join(f"{m} {v['ndcg@10']:.4f}" for m, v in ranked) + "."]
    if manifest:
        counts = manifest.get("counts", {})
        lines += ["", "## Data", "", "```json", json.dumps(counts, indent=1)[:3000], "```"]
    if trained:
        lines += ["", "## Training", "", "```json", json.dumps(trained, indent=1, default=str)[:2000], "```"]
    if evaluation:
        lines += ["", "## Offline evaluation", ""]
        md = Path(cfg.eval_dir) / "eval.md"
        lines.append(_embed(md, run_dir) if md.is_file() else json.dumps(evaluation, indent=1, default=str)[:4000])
    if serving:
        lines += ["", "## Serving", "", f"Endpoint was at {serving['url']}.", "",
                  "Simulated traffic: " + json.dumps(serving["traffic"], default=str), ""]
        for name, body in serving["samples"].items():
            items = body.get("items") or []
            shown = "; ".join(f"{i['title']} ({i['scores']['final']:.3f})" for i in items) or json.dumps(body)
            lines.append(f"- **{name}**: {shown}")
    if bandit:
        md = Path(cfg.explore_dir) / "report.md"
        lines += ["", "## Exploration experiment", "",
                  _embed(md, run_dir) if md.is_file() else json.dumps(bandit, default=str)[:4000]]
    if ope:
        lines += ["", "## Off-policy estimates from the endpoint's log", "", "```json",
                  json.dumps(ope, indent=1, default=str)[:4000], "```"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
