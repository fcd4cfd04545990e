"""Sequential retriever (SASRec): training throughput, Ray Train vs plain PyTorch, and
history-path retrieval latency, in one run.

1. Training: sequences/s and positions/s (real next-item targets/s) of a plain single-process
   loop (the same ``SASRec``, ``sequence_loss``, ``training_tensors``, AdamW, seed and batch
   order as the worker loop) and of ``run_retriever_training`` (Ray Train, DDP) with each of
   --workers; the same total torch threads (--threads) in both, split across the workers.
   Steady state only, the same epochs in both: every run trains 2 x --epochs epochs and times
   the second half (Ray: an evaluation every --epochs and the loop's own ``sequences_per_s`` of
   its second window, so start-up, warm-up epochs, validation and checkpoints are excluded).
   positions/s = sequences/s x the mean next-item targets per sequence.
2. Latency of ``SeqRetriever.retrieve([history], 50)`` in process (1 torch thread, as in a
   Serve replica with < 1 CPU) with the FAISS index over the retriever's item vectors and with
   the exact matmul, over --requests real histories (train + valid items, as served); with
   --endpoint also ``POST /recommend {"user_id", "k": 10}`` for known users through the Ray
   Serve app with ``serve.use_ranker=false`` (retrieval only, sequential requests): end to end
   and the response's ``latency_ms.retrieval``.

    python benchmarks/bench_retriever.py --out bench_retriever.json [--endpoint] [--data-dir DIR]

Data: --data-dir (a preprocessed dataset dir, e.g. from ``rayrec preprocess``), else
../shared/data/ml-latest-small preprocessed into a temp dir when present, else the synthetic
world. Starts its own local Ray instance and shuts it down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rayrec.runtime import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-latest-small"




def _pct(lat_ms: list[float]) -> dict:
    a = np.asarray(lat_ms, dtype=float)
    return {"requests": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3)}


def prepare_data(data_dir: str | None, tmp: Path) -> tuple[str, str]:
    """(data dir, where it came from): the given one, else a fresh preprocess in ``tmp``."""
    from rayrec.config import load_config
    from rayrec.data.pipeline import run_preprocess

    if data_dir:
        p = Path(data_dir).resolve()
        if not (p / "interactions").is_dir() and (p / "data" / "interactions").is_dir():
            p = p / "data"  # a run dir was given
        return str(p), str(p)
    over = {"run_dir": str(tmp / "prep"), "data.out": str(tmp / "data")}
    if MOVIELENS.is_dir():  # = rayrec preprocess --config configs/ml-latest-small.yaml
        cfg = load_config(ROOT / "configs" / "ml-latest-small.yaml", {**over, "data.path": str(MOVIELENS)})
        src = f"ml-latest-small ({MOVIELENS})"
    else:
        cfg, src = load_config(None, over), "synthetic world (default config)"
    run_preprocess(cfg)
    return cfg.data_dir, src


def plain_loop(cfg, n_items: int, epochs: int, threads: int) -> dict:
    """Single process: the worker loop's hot loop on the same sequences, no Ray, no DDP."""
    import torch
    from rayrec.seqrec.data import sequence_dataset, training_tensors
    from rayrec.seqrec.model import SASRec, sequence_loss

    rc = cfg.retriever
    items = sequence_dataset(cfg.data_dir, rc.max_len).to_pandas()["items"].tolist()
    torch.set_num_threads(threads)
    torch.manual_seed(rc.seed)
    inputs, targets = training_tensors(items, rc.max_len, n_items)
    pos_per_seq = float((targets != n_items).sum(1).double().mean())
    model = SASRec(n_items, rc)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    gen = torch.Generator().manual_seed(rc.seed * 1000)  # rank 0's generator
    steps = len(items) // rc.batch_size or 1
    for epoch in range(2 * epochs):  # the first half: warm-up, not timed (as the Ray runs)
        if epoch == epochs:
            t0, seen = time.perf_counter(), 0
        perm = torch.randperm(len(items), generator=gen)
        for s in range(steps):
            idx = perm[s * rc.batch_size : (s + 1) * rc.batch_size]
            loss = sequence_loss(model, inputs[idx], targets[idx], rc, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if epoch >= epochs:
                seen += len(idx)
    sps = seen / (time.perf_counter() - t0)
    return {"users": len(items), "steps_per_epoch": steps, "positions_per_sequence": pos_per_seq,
            "sequences_per_s": sps, "positions_per_s": sps * pos_per_seq, "final_loss": float(loss)}


def ray_run(cfg, workers: int, epochs: int, threads: int, tmp: Path, pos_per_seq: float):
    """run_retriever_training with ``workers``; throughput of its second evaluation window."""
    from rayrec.seqrec.trainer import run_retriever_training

    rc = cfg.retriever.model_copy(update={
        "num_workers": workers, "torch_threads": max(1, threads // workers),
        "max_epochs": 2 * epochs, "eval_every_epochs": epochs, "patience": 100, "max_minutes": None,
        "max_failures": 0, "run_name": f"bench_w{workers}", "out": str(tmp / f"retriever_w{workers}"),
    })
    wcfg = cfg.model_copy(update={"retriever": rc})
    t0 = time.perf_counter()
    res = run_retriever_training(wcfg)
    last = res["last"]
    if last.get("epoch") != 2 * epochs:
        raise RuntimeError(f"expected the last report at epoch {2 * epochs}, got {last}")
    sps = float(last["sequences_per_s"])
    metric = f"valid_{rc.early_stopping_metric}"
    return wcfg, {"threads_per_worker": rc.torch_threads, "sequences_per_s": sps,
                  "positions_per_s": sps * pos_per_seq, "final_loss": last.get("loss"),
                  metric: last.get(metric), "wall_s": round(time.perf_counter() - t0, 1)}


def inprocess_latency(cfg, histories: list[list[int]], n: int) -> dict:
    import torch
    from rayrec.retrieval.index import ItemIndex
    from rayrec.seqrec.scorer import SeqRetriever

    torch.set_num_threads(1)
    index = ItemIndex.load(cfg.retriever_index_dir)
    out = {}
    for name, retriever in (("faiss", SeqRetriever(cfg.retriever_model_dir, index)),
                            ("exact", SeqRetriever(cfg.retriever_model_dir))):
        lat = []
        for i in range(n + 10):  # the first 10: warm-up
            h = histories[i % len(histories)]
            t0 = time.perf_counter()
            retriever.retrieve([h], 50, [sorted(set(h))])  # as the retrieval deployment calls it
            if i >= 10:
                lat.append((time.perf_counter() - t0) * 1000)
        out[name] = _pct(lat)
    out["index_type"] = index.meta.get("type")
    return out


def endpoint_latency(cfg, users: list[str], n: int) -> dict:
    import httpx
    from ray import serve
    from rayrec.retrieval.index import build_index
    from rayrec.serving.control import start_app, stop_app

    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
        "use_ranker": False, "port": free_port(), "app_name": "bench_retriever",
        "ranking": cfg.serve.ranking.model_copy(update={"num_cpus": 0.25}),  # idle: not called
    })})
    build_index(cfg)  # the text index: the retrieval deployment loads it (unused on this path)
    url = start_app(cfg)
    e2e, stage, sources = [], [], Counter()
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(n + 10):
                t0 = time.perf_counter()
                r = http.post("/recommend", json={"user_id": users[i % len(users)], "k": 10})
                dt = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                body = r.json()
                if i >= 10:
                    e2e.append(dt)
                    stage.append(body["latency_ms"]["retrieval"])
                    sources[body["retrieval_source"]] += 1
    finally:
        stop_app(cfg)
        serve.shutdown()
    return {"end_to_end": _pct(e2e), "latency_ms.retrieval": _pct(stage), "sources": dict(sources)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON report path")
    ap.add_argument("--data-dir", help="preprocessed dataset (default: build one in a temp dir)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per training run")
    ap.add_argument("--workers", default="1,2", help="Ray Train worker counts, comma-separated")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in total (default: torch's)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--endpoint", action="store_true", help="also measure through Ray Serve")
    ap.add_argument("--max-len", type=int, default=None, help="retriever.max_len (default: config's)")
    ap.add_argument("--dim", type=int, default=None, help="retriever.dim (default: config's)")
    args = ap.parse_args()

    import ray
    import torch
    from rayrec.config import load_config
    from rayrec.data.store import load_items, load_users
    from rayrec.runtime import init_ray
    from rayrec.seqrec.data import load_sequences

    threads = args.threads or torch.get_num_threads()
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    if not worker_counts:
        ap.error("--workers needs at least one worker count (its model is the one timed in part 2)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_retriever_"))
    over = {"run_dir": str(tmp / "run")}
    over |= {f"retriever.{k}": v for k, v in (("max_len", args.max_len), ("dim", args.dim)) if v}
    init_ray(load_config(None, over).ray)
    try:
        data_dir, source = prepare_data(args.data_dir, tmp)
        cfg = load_config(None, {**over, "data.out": data_dir})
        n_items = len(load_items(data_dir))
        rc = cfg.retriever
        report: dict = {"data": source, "items": n_items, "max_len": rc.max_len, "dim": rc.dim,
                        "layers": rc.layers, "batch_size": rc.batch_size, "loss": rc.loss,
                        "timed_epochs": args.epochs, "torch_threads": threads, "os_cpus": os.cpu_count()}
        plain = plain_loop(cfg, n_items, args.epochs, threads)
        rows = [{"run": "plain torch", "workers": 1, "threads_per_worker": threads, **plain}]
        served_cfg = None
        for w in worker_counts:
            wcfg, r = ray_run(cfg, w, args.epochs, threads, tmp, plain["positions_per_sequence"])
            served_cfg = served_cfg or wcfg
            rows.append({"run": "ray train", "workers": w, **r})
        for r in rows:
            r["ratio_vs_plain"] = r["sequences_per_s"] / plain["sequences_per_s"]
        report |= {k: plain[k] for k in ("users", "steps_per_epoch", "positions_per_sequence")}
        report["training"] = rows

        test = load_sequences(data_dir, "test")  # history = train + valid items, as served
        histories = [[int(i) for i in h] for h in test["history"]]
        report["latency"] = {"candidates": 50, "in_process": inprocess_latency(served_cfg, histories, args.requests)}
        if args.endpoint:
            users = load_users(data_dir)
            known = users[users["user_idx"].isin(set(test["user_idx"]))]["user_id"].astype(str).tolist()
            report["latency"]["endpoint"] = endpoint_latency(served_cfg, known, args.requests)
    finally:
        ray.shutdown()

    print(f"\nretriever training: {report['data']}, {report['users']} users x {n_items} items, "
          f"max_len {rc.max_len}, dim {rc.dim}, {args.epochs} timed epochs of {plain['steps_per_epoch']} steps, {threads} torch threads\n")
    print("| run | workers | threads/worker | sequences/s | positions/s | ratio vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['workers']} | {r['threads_per_worker']} | {r['sequences_per_s']:.1f} "
              f"| {r['positions_per_s']:.0f} | {r['ratio_vs_plain']:.3f} |")
    lat = report["latency"]
    table = [(f"in-process, FAISS ({lat['in_process']['index_type']})", lat["in_process"]["faiss"]),
             ("in-process, exact matmul", lat["in_process"]["exact"])]
    if "endpoint" in lat:
        table += [("endpoint POST /recommend, end to end", lat["endpoint"]["end_to_end"]),
                  ("endpoint latency_ms.retrieval", lat["endpoint"]["latency_ms.retrieval"])]
    print("\nhistory-path retrieval latency, top-50 (sequential requests)\n")
    print("| path | requests | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, s in table:
        print(f"| {name} | {s['requests']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |")
    if "endpoint" in lat:
        print(f"\nendpoint retrieval_source counts: {lat['endpoint']['sources']}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
