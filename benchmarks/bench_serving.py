"""Serving load benchmark (loopback only, bounded in time).

1. Latency p50/p95/p99 and throughput of ``POST /recommend`` at fixed concurrency levels,
   against the same retrieval + ranking + policy pipeline called in-process (Serve overhead).
2. Ranking deployment throughput with ``@serve.batch`` (max_batch_size N) vs without (1).
3. Autoscaling: ranking replica count over time (``serve.status()``) under load and after.
4. Precision: the endpoint with fp32 vs int8 ranking (``model.precision``), batched vs not,
   at each concurrency level: p50/p95/p99, throughput and the fraction of degraded answers.

    python benchmarks/bench_serving.py --out bench_serving.json [--backbone minilm]
    python benchmarks/bench_serving.py --out p.json --backbone minilm --sections precision \
        --concurrency 1 4 16 64 --rank-candidates 50

Builds its own small synthetic world (preprocess + index) in a temp dir and starts its own
local Ray instance, which it shuts down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rayrec.runtime import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")




def _summary(lat_s: list[float], wall_s: float, errors: int, degraded: int = 0) -> dict:
    """Latency over every answer; throughput counts full-quality (not degraded) answers only."""
    ms = np.asarray(lat_s) * 1000
    return {
        "requests": len(lat_s), "errors": errors, "degraded": degraded,
        "degraded_fraction": round(degraded / len(lat_s), 3) if len(lat_s) else None,
        "throughput_rps": round((len(lat_s) - degraded) / wall_s, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
    }


async def _http_load(url: str, users: list[str], concurrency: int, seconds: float, k: int) -> dict:
    import httpx

    lat, errors, degraded, stages = [], 0, 0, []
    deadline = time.perf_counter() + seconds
    rng = np.random.default_rng(concurrency)

    async def worker(client):
        nonlocal errors, degraded
        while time.perf_counter() < deadline:
            body = {"user_id": users[int(rng.integers(len(users)))], "k": k}
            t0 = time.perf_counter()
            r = await client.post(url, json=body)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
                body = r.json()
                degraded += bool(body["degraded"])
                stages.append(body.get("latency_ms") or {})
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    out = _summary(lat, wall, errors, degraded)
    # Where the time went, as the ingress measured it (the rest of the client's time is the
    # HTTP proxy, the ingress' own work around the calls and the JSON response).
    names = sorted({k for st in stages for k in st})
    out["stage_p50_ms"] = {k: round(float(np.median([st[k] for st in stages if k in st])), 2) for k in names}
    return out


def _inprocess_load(pipeline, users: list[str], concurrency: int, seconds: float, k: int) -> dict:
    lat, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(seed: int):
        rng = np.random.default_rng(seed)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            pipeline(users[int(rng.integers(len(users)))], k)
            with lock:
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return _summary(lat, time.perf_counter() - t0, 0)


def make_inprocess_pipeline(cfg):
    """The same stages the endpoint runs, as plain calls in this process."""
    from rayrec.data.text import render_history
    from rayrec.explore.policies import make_policy
    from rayrec.models.ranker import load_ranker
    from rayrec.serving.app import _absolute_dirs
    from rayrec.serving.retrieval import RetrievalDeployment, RetrievalRequest

    cfg = _absolute_dirs(cfg)
    retrieval = RetrievalDeployment.func_or_class(cfg.model_dump(mode="json"))
    ranker = load_ranker(cfg.model, None)
    policy = make_policy(cfg.serve.default_policy, cfg.explore)
    model_lock, policy_lock = threading.Lock(), threading.Lock()

    def run(user_id: str, k: int):
        # The deployment's method is a coroutine (it may await the generation deployment); on
        # the index path it never suspends, so running it to completion here is a plain call.
        cand = asyncio.run(retrieval.retrieve(RetrievalRequest(
            user_id=user_id, num_candidates=max(cfg.serve.rank_candidates, k), with_embeddings=policy.needs_features)))
        texts = cand["history_texts"][-cfg.model.max_history_items:]
        with model_lock:  # one model instance (like one ranking replica); tokenizers are not thread-safe
            scores = ranker.score([render_history(texts)], [cand["text"]])[0]
        with policy_lock:  # the policy state is shared, as in the endpoint's state actor
            return policy.select(scores, k, cand["embeddings"], np.asarray(cand["item_idx"]))  # as the endpoint

    return run


async def _rank_throughput(app: str, texts: list[str], n_requests: int, concurrency: int) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle("Ranking", app_name=app)
    await handle.info.remote()
    sem = asyncio.Semaphore(concurrency)
    lat = []

    async def one(i):
        async with sem:
            t0 = time.perf_counter()
            await handle.score.remote(texts[i % len(texts)], texts[:20])
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n_requests)))
    return _summary(lat, time.perf_counter() - t0, 0)


async def _burst(url: str, users: list[str], n: int, k: int) -> dict:
    """n simultaneous requests: status counts and latency per status."""
    import httpx

    async def one(client, i):
        t0 = time.perf_counter()
        r = await client.post(url, json={"user_id": users[i % len(users)], "k": k})
        return r.status_code, time.perf_counter() - t0

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n + 4)) as client:
        out = await asyncio.gather(*(one(client, i) for i in range(n)))
    by_status: dict = {}
    for status, lat in out:
        by_status.setdefault(str(status), []).append(lat * 1000)
    return {s: {"count": len(v), "p50_ms": round(float(np.median(v)), 1), "max_ms": round(max(v), 1)}
            for s, v in sorted(by_status.items())}


def _ranking_replicas(app: str) -> tuple[int, int]:
    """(running, running + starting) replicas of the ranking deployment."""
    from ray import serve

    states = serve.status().applications[app].deployments["Ranking"].replica_states
    running = int(states.get("RUNNING", 0))
    return running, running + int(states.get("STARTING", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--backbone", default="tiny", help="'tiny' (random tiny BERT) or 'minilm' / a path")
    ap.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--num-cpus", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the batching comparison")
    ap.add_argument("--sections", nargs="+", default=["latency", "batching", "autoscaling", "overload"],
                    choices=["latency", "batching", "autoscaling", "overload", "precision"])
    ap.add_argument("--rank-candidates", type=int, default=20, help="serve.rank_candidates")
    ap.add_argument("--max-length", type=int, default=128, help="model.max_length (tokens per sequence)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--ranking-cpus", type=float, default=1.0, help="serve.ranking.num_cpus")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 1], help="precision: max_batch_size values")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="config overrides for every app, e.g. serve.policy_sync_s=0")
    ap.add_argument("--data-plane", default="auto", choices=["auto", "haproxy", "grpc", "default"],
                    help="ray.serve_data_plane of the local Ray this benchmark starts")
    args = ap.parse_args()
    import ray
    from ray import serve
    from rayrec.config import load_config
    from rayrec.data.pipeline import run_preprocess
    from rayrec.data.store import load_items, load_users
    from rayrec.retrieval.index import build_index
    from rayrec.runtime import local_ray_env
    from rayrec.serving.app import build_app

    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    backbone = args.backbone
    if backbone == "tiny":
        from rayrec.models.tiny import make_tiny_backbone

        backbone = str(make_tiny_backbone("bert", tmp / "tiny_bert"))
    base = {
        "run_dir": str(tmp / "run"), "model.backbone": backbone, "model.max_length": args.max_length,
        "data.synthetic.n_users": 300, "data.synthetic.n_items": 400, "data.synthetic.n_events": 9000,
        "serve.rank_candidates": args.rank_candidates, "serve.ranking.num_cpus": args.ranking_cpus,
        "serve.retrieval_num_cpus": 0.5,
        "serve.ingress_num_cpus": 0.5, "serve.ranking.max_batch_size": 16,
        "serve.ranking.autoscaling.min_replicas": 1, "serve.ranking.autoscaling.max_replicas": 1,
        "serve.event_flush_interval_s": 5.0,
    }
    for kv in args.overrides:
        key, _, value = kv.partition("=")
        base[key] = value
    cfg = load_config(None, base)
    with local_ray_env(args.data_plane) as plane_env:  # the local Ray's processes get them, not this one
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    results: dict = {"backbone": args.backbone, "k": args.k, "rank_candidates": args.rank_candidates,
                     "max_length": args.max_length, "ranking_cpus": args.ranking_cpus,
                     "num_cpus": args.num_cpus, "os_cpus": os.cpu_count(), "seconds_per_level": args.seconds,
                     "data_plane": args.data_plane, "data_plane_env": plane_env, "overrides": args.overrides}
    try:
        t0 = time.time()
        run_preprocess(cfg)
        build_index(cfg)
        results["setup_s"] = round(time.time() - t0, 1)
        users = load_users(cfg.data_dir)["user_id"].astype(str).tolist()
        texts = load_items(cfg.data_dir)["text"].astype(str).tolist()

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/bench/recommend"
        if args.sections == ["precision"]:
            _precision(base, port, users, args, results)
            return
        serve.run(build_app(base), name="bench", route_prefix="/bench")
        asyncio.run(_http_load(url, users, 2, 2.0, args.k))  # warm-up

        if "latency" in args.sections:
            results["latency"] = _latency(cfg, url, users, args)
            results["floor"] = _floor(port, users, args)

        if "batching" in args.sections:
            serve.delete("bench")
            # Two apps side by side, measured in alternating rounds so load drift hits both.
            for mbs in (16, 1):
                serve.run(build_app({**base, "serve.ranking.max_batch_size": mbs}), name=f"bench_b{mbs}",
                          route_prefix=f"/b{mbs}")
                asyncio.run(_rank_throughput(f"bench_b{mbs}", texts, 16, 4))  # warm-up
            rounds: dict = {16: [], 1: []}
            for _ in range(args.rounds):
                for mbs in (16, 1):
                    rounds[mbs].append(asyncio.run(_rank_throughput(f"bench_b{mbs}", texts, 128, 32)))
            batching = {}
            for mbs, runs in rounds.items():
                med = sorted(runs, key=lambda r: r["throughput_rps"])[len(runs) // 2]
                batching[f"max_batch_size={mbs}"] = {"median_round": med,
                                                     "throughput_rps_rounds": [r["throughput_rps"] for r in runs]}
                print(f"ranking max_batch_size={mbs}: median {med}; rps per round "
                      f"{[r['throughput_rps'] for r in runs]}", flush=True)
                serve.delete(f"bench_b{mbs}")
            batching["speedup"] = round(batching["max_batch_size=16"]["median_round"]["throughput_rps"]
                                        / batching["max_batch_size=1"]["median_round"]["throughput_rps"], 2)
            results["ranking_batching"] = batching
        else:
            serve.delete("bench")

        if "autoscaling" in args.sections:
            _autoscaling(base, port, users, args.k, results)
        if "overload" in args.sections:
            _overload(base, port, users, args.k, results)
        if "precision" in args.sections:
            _precision(base, port, users, args, results)
    finally:
        serve.shutdown()
        ray.shutdown()
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


def _precision(base: dict, port: int, users: list[str], args, results: dict) -> None:
    """fp32 vs int8 ranking, batched (max_batch_size 16) vs not (1), one app at a time (each
    holds the same CPUs): per concurrency level p50/p95/p99, throughput, degraded fraction."""
    from ray import serve
    from rayrec.serving.app import build_app

    rows = results.setdefault("precision", [])
    for precision in args.precisions:
        for mbs in args.batch_sizes:
            name = f"p_{precision}_b{mbs}"
            serve.run(build_app({**base, "model.precision": precision,
                                 "serve.ranking.max_batch_size": mbs}), name=name, route_prefix=f"/{name}")
            url = f"http://127.0.0.1:{port}/{name}/recommend"
            asyncio.run(_http_load(url, users, 2, 3.0, args.k))  # warm-up
            for c in args.concurrency:
                r = asyncio.run(_http_load(url, users, c, max(args.seconds, 2.0 * c * 0.3), args.k))
                rows.append({"precision": precision, "max_batch_size": mbs, "concurrency": c, **r})
                print(f"{precision:>5} batch<={mbs:<2} c={c:>3}  p50/p95/p99 {r['p50_ms']}/{r['p95_ms']}/"
                      f"{r['p99_ms']} ms  {r['throughput_rps']} rps  degraded {r['degraded']}/"
                      f"{r['requests']}  errors {r['errors']}", flush=True)
            serve.delete(name)


def _latency(cfg, url: str, users: list[str], args) -> list[dict]:
    import torch

    torch.set_num_threads(max(1, int(args.ranking_cpus)))  # the ranking replica's threads
    pipeline = make_inprocess_pipeline(cfg)
    for _ in range(5):
        pipeline(users[0], args.k)
    levels = []
    for c in args.concurrency:
        served = asyncio.run(_http_load(url, users, c, args.seconds, args.k))
        inproc = _inprocess_load(pipeline, users, c, args.seconds, args.k)
        row = {"concurrency": c, "serve": served, "in_process": inproc,
               "p50_ratio": round(served["p50_ms"] / inproc["p50_ms"], 2),
               "throughput_ratio": round(served["throughput_rps"] / inproc["throughput_rps"], 2)}
        levels.append(row)
        print(f"c={c:>3}  ingress stage p50 ms {served['stage_p50_ms']}", flush=True)
        print(f"c={c:>3}  serve p50/p95/p99 {served['p50_ms']}/{served['p95_ms']}/{served['p99_ms']} ms "
              f"{served['throughput_rps']} rps | in-process p50/p95/p99 {inproc['p50_ms']}/"
              f"{inproc['p95_ms']}/{inproc['p99_ms']} ms {inproc['throughput_rps']} rps | "
              f"p50 x{row['p50_ratio']} rps x{row['throughput_ratio']}", flush=True)
    return levels


def _floor(port: int, users: list[str], args) -> dict:
    """Serve's own cost for this topology on this machine: the request path's hops (HTTP proxy
    -> FastAPI ingress -> retrieval -> batched ranking), with the app's concurrency limits,
    doing no work. (The policy's slate is chosen in the ingress, its registration is off-path.)"""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)  # as the app's
    class FloorRetrieval:
        def retrieve(self, user_id):
            return {"item_idx": list(range(args.rank_candidates)), "text": ["x"] * args.rank_candidates}

    @serve.deployment(ray_actor_options={"num_cpus": args.ranking_cpus}, max_ongoing_requests=32)
    class FloorRanking:
        async def score(self, texts):
            return await self._batch(texts)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0)
        async def _batch(self, batch):
            return [[0.0] * len(t) for t in batch]

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
    @serve.ingress(app)
    class FloorIngress:
        def __init__(self, retrieval, ranking):
            self.retrieval, self.ranking = retrieval, ranking

        @app.post("/recommend")
        async def recommend(self, body: dict):
            cand = await self.retrieval.retrieve.remote(body.get("user_id"))
            scores = await self.ranking.score.remote(cand["text"])
            picks = sorted(range(len(scores)), key=lambda i: -scores[i])[:10]
            return {"degraded": False, "items": [{"item_id": str(cand["item_idx"][i])} for i in picks]}

    serve.run(FloorIngress.bind(FloorRetrieval.bind(), FloorRanking.bind()), name="floor", route_prefix="/floor")
    url = f"http://127.0.0.1:{port}/floor/recommend"
    asyncio.run(_http_load(url, users, 2, 2.0, args.k))  # warm-up
    out = {}
    for c in args.concurrency:
        out[c] = r = asyncio.run(_http_load(url, users, c, args.seconds, args.k))
        print(f"c={c:>3}  floor (same hops, no work) p50/p95/p99 {r['p50_ms']}/{r['p95_ms']}/{r['p99_ms']} ms "
              f"{r['throughput_rps']} rps", flush=True)
    serve.delete("floor")
    return out


def _autoscaling(base: dict, port: int, users: list[str], k: int, results: dict) -> None:
    from ray import serve
    from rayrec.serving.app import build_app

    # Autoscaling: 1..3 ranking replicas on ongoing requests, then back down when idle.
    auto = {**base, "serve.ranking.num_cpus": 0.5, "serve.ranking.max_batch_size": 4,
            "serve.ranking.autoscaling.min_replicas": 1, "serve.ranking.autoscaling.max_replicas": 3,
            "serve.ranking.autoscaling.target_ongoing_requests": 2,
            "serve.ranking.autoscaling.upscale_delay_s": 1, "serve.ranking.autoscaling.downscale_delay_s": 4}
    serve.run(build_app(auto), name="bench_auto", route_prefix="/auto")
    timeline, stop = [], threading.Event()
    t_start = time.time()

    def sample():
        while not stop.is_set():
            timeline.append((round(time.time() - t_start, 1), *_ranking_replicas("bench_auto")))
            time.sleep(1.0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    load = asyncio.run(_http_load(f"http://127.0.0.1:{port}/auto/recommend", users, 24, 35.0, k))
    load_end = round(time.time() - t_start, 1)
    # Idle: wait (bounded) until the replicas that were added are gone again.
    deadline = time.time() + 60
    time.sleep(2.0)
    while time.time() < deadline and timeline[-1][2] > 1:
        time.sleep(1.0)
    stop.set()
    sampler.join()
    peak = max(n for _, _, n in timeline)
    peak_running = max(n for _, n, _ in timeline)
    results["autoscaling"] = {
        "load": load, "load_ends_at_s": load_end, "peak_replicas_incl_starting": peak,
        "peak_running_replicas": peak_running, "final_replicas": timeline[-1][2],
        "timeline_t_running_total": timeline,
    }
    print(f"autoscaling: peak {peak_running} running / {peak} incl. starting ranking replicas under "
          f"load (load ended at {load_end}s), final {timeline[-1][2]}; "
          f"timeline (t, running, running+starting) {timeline}", flush=True)
    serve.delete("bench_auto")


def _overload(base: dict, port: int, users: list[str], k: int, results: dict) -> None:
    from ray import serve
    from rayrec.serving.app import build_app

    # Overload: a capped ingress answers the excess with quick 503s instead of queueing.
    capped = {**base, "serve.ingress_max_ongoing_requests": 2, "serve.ingress_max_queued_requests": 2}
    serve.run(build_app(capped), name="bench_cap", route_prefix="/cap")
    results["overload"] = asyncio.run(_burst(f"http://127.0.0.1:{port}/cap/recommend", users, 64, k))
    print(f"overload burst of 64 against max_ongoing=2/max_queued=2: {results['overload']}", flush=True)
    serve.delete("bench_cap")


if __name__ == "__main__":
    main()
