"""Preprocessing throughput and peak memory: the Ray Data pipeline vs single-process pandas.

For each size, a synthetic event log (impressions + clicks, with malformed rows) is generated
once; then, each in a fresh subprocess, (a) ``run_preprocess`` on a local Ray instance and
(b) a pandas implementation of the same steps (read, validate, label, dedup, k-core, id map,
leave-last-out split, histories, negatives, example text, Parquet out) process it. Peak memory
is the largest sampled sum of RSS over the subprocess and all its descendants (driver, raylet,
Ray workers; shared object-store pages are counted once per process that maps them).

    python benchmarks/bench_preprocess.py --events 1000000 10000000 --out bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()


def world_sizes(n_events: int) -> dict:
    return {"n_users": max(1000, n_events // 100), "n_items": max(500, min(20_000, n_events // 500)),
            "n_events": n_events, "malformed_fraction": 0.001, "rows_per_chunk": 500_000}


# ----------------------------------------------------------------------------- workers


def start_ray(cpus: int, **kwargs) -> None:
    """A private local Ray instance; retried because a loaded shared machine can time out."""
    import ray

    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False, **kwargs)
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(10)


def _ray_worker(raw: str, out: str, cpus: int) -> dict:
    import ray
    from rayrec.config import load_config
    from rayrec.data.pipeline import run_preprocess
    from rayrec.data.synthetic import synthetic_data_config

    start_ray(cpus, object_store_memory=1024**3)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = load_config(None, {"run_dir": out})
    data = synthetic_data_config(cfg.data, raw).model_dump()
    cfg = load_config(None, {"run_dir": out, "data": data})
    t = time.perf_counter()
    manifest = run_preprocess(cfg)
    seconds = time.perf_counter() - t
    ray.shutdown()
    return {"seconds": seconds, "counts": manifest["counts"], "timings_s": manifest["timings_s"]}


def _pandas_worker(raw: str, out: str) -> dict:
    """The same steps in one process with pandas (+ the same numpy helpers for the examples)."""
    import glob

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rayrec.config import load_config
    from rayrec.data import build

    pre = load_config(None).preprocess
    t = time.perf_counter()
    df = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(f"{raw}/events/*.parquet"))],
                   ignore_index=True)
    catalog = pd.read_parquet(f"{raw}/catalog.parquet")
    n_read = len(df)
    user = pd.to_numeric(df.user_id, errors="coerce")
    item = pd.to_numeric(df.item_id, errors="coerce")
    ts = pd.to_numeric(df.timestamp, errors="coerce")
    ok = user.notna() & item.notna() & ts.notna() & df.event.notna() & (ts >= 0)
    ok &= df.item_id.isin(catalog.item_id)
    rejects = df[~ok]
    df = pd.DataFrame({"user": user[ok].astype(np.int64), "item": item[ok].astype(np.int64),
                       "ts": ts[ok].astype(np.int64), "event": df.event[ok]})
    df["label"] = df.event.isin(pre.positive_events).astype(np.int8)
    n_before = len(df)
    df = df.drop_duplicates()
    n_dup = n_before - len(df)
    rows = df
    while True:  # k-core on positives to a fixed point
        pos = rows[rows.label == 1]
        uc = pos.groupby("user").size()
        pos = pos[pos.user.isin(uc[uc >= pre.min_user_interactions].index)]
        ic = pos.groupby("item").size()
        items = ic[ic >= pre.min_item_interactions].index
        users = pos[pos.item.isin(items)].groupby("user").size()
        users = users[users >= pre.min_user_interactions].index
        new = rows[rows.user.isin(users) & rows.item.isin(items)]
        if len(new) == len(rows):
            break
        rows = new
    n_filtered = len(df) - len(rows)
    uid = {u: i for i, u in enumerate(np.sort(rows.user.unique()))}
    iid_sorted = np.sort(rows.item.unique())
    rows = rows.assign(u=rows.user.map(uid), i=np.searchsorted(iid_sorted, rows.item))
    rows = rows.sort_values(["u", "ts", "i"], kind="stable")
    rows["cum"] = rows.groupby("u").label.cumsum()
    npos = rows.groupby("u").label.transform("sum")
    after = npos - rows.cum
    split = np.zeros(len(rows), dtype=np.int8)
    lab = rows.label.to_numpy() == 1
    a = after.to_numpy()
    n = npos.to_numpy()
    split[(n >= 2) & (((a == 0) & lab) | ((a == 0) & ~lab))] = 2
    split[(n >= 3) & (((a == 1) & lab) | ((a == 1) & ~lab))] = 1
    rows["split"] = split
    os.makedirs(out, exist_ok=True)
    for code, name in enumerate(("train", "valid", "test")):
        part = rows[rows.split == code]
        part[["u", "i", "ts", "label"]].to_parquet(f"{out}/interactions_{name}.parquet")
    pos = rows[rows.label == 1]
    pu, pi, pt, ps = (pos[c].to_numpy() for c in ("u", "i", "ts", "split"))
    hist = {}
    for u, items_u in pos[pos.split == 0].groupby("u").i:
        hist[u] = items_u.to_numpy()[-pre.max_history:]
    pd.DataFrame({"user_idx": list(hist), "history": list(hist.values())}).to_parquet(
        f"{out}/histories.parquet")
    texts = catalog.set_index(catalog.item_id.astype(np.int64)).title.reindex(iid_sorted)
    texts = pa.array((texts.fillna("") + " | Genres: " + catalog.set_index(
        catalog.item_id.astype(np.int64)).category.reindex(iid_sorted).fillna("")).to_numpy())
    off, val = build.previous_positives(pu, pi, pre.max_history)
    history = pa.LargeListArray.from_arrays(pa.array(off), pa.array(val))
    interacted = np.unique(rows.u.to_numpy() * len(iid_sorted) + rows.i.to_numpy())
    rng = np.random.default_rng(0)
    for code, name in enumerate(("train", "valid", "test")):
        idx = np.flatnonzero(ps == code)
        k = pre.num_negatives if code == 0 else pre.eval_negatives
        with pq.ParquetWriter(f"{out}/examples_{name}.parquet", build.EXAMPLE_SCHEMA) as w:
            for s in range(0, max(len(idx), 1), 50_000):
                r = idx[s:s + 50_000]
                negs = build.sample_negatives(pu[r], k, len(iid_sorted), interacted, rng)
                w.write_table(build.build_examples(pu[r], pi[r], pt[r], history.take(pa.array(r)),
                                                   negs, texts))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "counts": {"rows_read": n_read, "rows_rejected": len(rejects),
                                           "duplicates_removed": n_dup, "rows_filtered": n_filtered,
                                           "rows_kept": len(rows), "examples": int(len(pos))}}


# ----------------------------------------------------------------------------- driver


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; sample the RSS of its process tree every 0.2 s; return its JSON + peak."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    proc = subprocess.Popen([*cmd, "--result", result_path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{err.decode()[-3000:]}")
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["peak_rss_gb"] = round(peak / 1024**3, 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--_run", choices=["ray", "pandas", "generate"], help=argparse.SUPPRESS)
    ap.add_argument("--raw", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        if args._run == "ray":
            res = _ray_worker(args.raw, args.dst, args.cpus)
        elif args._run == "pandas":
            res = _pandas_worker(args.raw, args.dst)
        else:
            import ray
            from rayrec.data.config import SyntheticWorldConfig
            from rayrec.data.synthetic import generate_event_log

            start_ray(args.cpus)
            t = time.perf_counter()
            info = generate_event_log(SyntheticWorldConfig(**world_sizes(args.events[0])), args.raw)
            res = {"seconds": time.perf_counter() - t, "rows": info["rows"]}
            ray.shutdown()
        Path(args.result).write_text(json.dumps(res))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    me = [sys.executable, str(HERE), "--out", "-", "--cpus", str(args.cpus)]
    report = {"machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1)},
              "runs": []}
    print(f"{'events':>11} {'impl':>7} {'seconds':>8} {'events/s':>10} {'peak GB':>8}")
    for n in args.events:
        raw = work / f"raw_{n}"
        gen = measure([*me, "--_run", "generate", "--events", str(n), "--raw", str(raw)])
        row = {"events": n, "world": world_sizes(n), "generate_s": round(gen["seconds"], 2)}
        impls = ["ray"] + ([] if args.skip_pandas else ["pandas"])
        for impl in impls:
            r = measure([*me, "--_run", impl, "--raw", str(raw), "--dst", str(work / f"out_{impl}_{n}")])
            r["events_per_s"] = round(n / r["seconds"])
            row[impl] = r
            print(f"{n:>11,} {impl:>7} {r['seconds']:>8.1f} {r['events_per_s']:>10,} {r['peak_rss_gb']:>8.2f}")
        if "pandas" in row:
            row["time_ratio_ray_over_pandas"] = round(row["ray"]["seconds"] / row["pandas"]["seconds"], 3)
            row["memory_ratio_ray_over_pandas"] = round(row["ray"]["peak_rss_gb"] / row["pandas"]["peak_rss_gb"], 3)
            print(f"{'':>11} ratio ray/pandas: time {row['time_ratio_ray_over_pandas']:.2f}x, "
                  f"peak memory {row['memory_ratio_ray_over_pandas']:.2f}x")
        report["runs"].append(row)
        Path(args.out).write_text(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
