"""How soon does an item posted to a running endpoint get recommended?

    python benchmarks/bench_catalog_add.py --config configs/ml-latest-small.yaml \
        [--set KEY=VALUE ...] --items 20 --out catalog_add.json
    # several retrieval replicas: the delay until every replica serves it
    python benchmarks/bench_catalog_add.py --config ... --set serve.retrieval_replicas=2 --out r2.json

On a run directory with the endpoint's artifacts (data, text index; a retriever helps): starts
the endpoint as its own app (``rayrec_catalog_bench``) whose added items go to a temporary
catalog and whose events and policy state go to a temporary directory, never the run's own.
Then, one item at a time, it posts a new item whose text is a random catalog item's (title
perturbed, genres and tags kept: tags as the free text) and asks ``POST /recommend`` over and
over until the item shows up, on two paths:

  history  a user whose history is the source item (the sequential retriever's path; an
           ID-only retriever never serves an added item there, which the answer's note says)
  text     the item's title as a free-text query (the text index's path)

Reports, per path, the seconds from sending the POST to the item's first appearance and to
``--stable`` answers in a row showing it (with several replicas: served by all of them), p50
and p90 over the items that appeared within ``--timeout``, how many did, their rank, and the
POST's own latency. JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ADMIN_ENV = "RAYREC_BENCH_ADMIN_KEYS"
PATHS = ("history", "text")


def _perturbed(title: str) -> str:
    """'Heat (1995)' -> 'Heat: Redux (1995)': the same item text, a title no catalog item has."""
    m = re.match(r"^(.*?)(\s*\(\d{4}\))?$", title)
    return f"{m.group(1)}: Redux{m.group(2) or ''}"


def _new_items(items, n: int, seed: int, tag: str) -> list[dict]:
    """n posted rows, each copied from a random catalog item (``source``: its raw id)."""
    from rayrec.data.text import parse_item_text

    rng = np.random.default_rng(seed)
    rows = []
    for r in rng.choice(len(items), size=min(n, len(items)), replace=False):
        title, genres, tags = parse_item_text(str(items["text"].iloc[r]))
        row = {"item_id": f"bench-{tag}-{len(rows)}", "title": _perturbed(title), "genres": genres}
        if tags:
            row["text"] = ", ".join(tags)
        rows.append({"row": row, "source": str(items["item_id"].iloc[r])})
    return rows


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p90_s": None, "max_s": None}
    a = np.asarray(values)
    return {"p50_s": round(float(np.percentile(a, 50)), 3), "p90_s": round(float(np.percentile(a, 90)), 3),
            "max_s": round(float(a.max()), 3)}


def _rank(http, body: dict, item_id: str) -> int | None:
    r = http.post("/recommend", json=body)
    if r.status_code != 200:
        return None
    ids = [it["item_id"] for it in r.json()["items"]]
    return ids.index(item_id) if item_id in ids else None


def _time_one(http, key: str, item: dict, k: int, stable: int, timeout_s: float, poll_s: float) -> dict:
    """POST one item, then poll both paths until each shows it ``stable`` times in a row."""
    row = item["row"]
    requests = {"history": {"history": [item["source"]], "k": k, "diversity": 0.0},
                "text": {"query": row["title"], "k": k, "diversity": 0.0}}
    t0 = time.perf_counter()
    r = http.post("/items", json={"items": [row]}, headers={"x-api-key": key})
    post_s = time.perf_counter() - t0
    if r.status_code != 200:
        return {"item_id": row["item_id"], "error": f"{r.status_code}: {r.text[:300]}"}
    out = {"item_id": row["item_id"], "post_s": post_s, "note": r.json().get("note")}
    first, streak, done, rank = {}, dict.fromkeys(PATHS, 0), {}, {}
    while len(done) < len(PATHS) and time.perf_counter() - t0 < timeout_s:
        for path in PATHS:
            if path in done:
                continue
            pos = _rank(http, requests[path], row["item_id"])
            now = time.perf_counter() - t0
            streak[path] = streak[path] + 1 if pos is not None else 0
            if pos is not None:
                first.setdefault(path, now)
                rank.setdefault(path, pos)
            if streak[path] >= stable:
                done[path] = now
        time.sleep(poll_s)
    for path in PATHS:
        out[path] = {"first_s": first.get(path), "stable_s": done.get(path), "rank": rank.get(path)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--k", type=int, default=None, help="items per answer (default serve.max_k)")
    ap.add_argument("--stable", type=int, default=5, help="answers in a row that must show the item")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each item")
    ap.add_argument("--poll", type=float, default=0.02, help="pause between polls (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary catalog and events (printed)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import httpx
    from rayrec.config import load_config, parse_override
    from rayrec.data.store import load_items
    from rayrec.runtime import init_ray
    from rayrec.serving.control import start_app, stop_app

    overrides = dict(parse_override(kv) for kv in args.set)
    scratch = Path(tempfile.mkdtemp(prefix="rayrec_catalog_bench_"))
    # Nothing the benchmark does reaches the run's own catalog, events or policy state.
    bench = {"serve.app_name": "rayrec_catalog_bench", "serve.route_prefix": "/catalog_bench",
             "serve.catalog": str(scratch / "catalog"), "serve.event_log": str(scratch / "events"),
             "serve.admin_api_keys_env": ADMIN_ENV, "explore.state_path": str(scratch / "bandit_state.npz")}
    cfg = load_config(args.config, overrides | bench)
    key = secrets.token_hex(16)
    os.environ[ADMIN_ENV] = key  # before Ray starts: the local replicas inherit it
    items = _new_items(load_items(cfg.data_dir), args.items, args.seed, secrets.token_hex(3))
    k = args.k or cfg.serve.max_k
    init_ray(cfg.ray)
    url = start_app(cfg)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            _time_one(http, key, {"row": {"item_id": "bench-warmup", "title": "Warm-up Item"},
                                  "source": items[0]["source"]}, k, 1, args.timeout, args.poll)
            timings = [_time_one(http, key, it, k, args.stable, args.timeout, args.poll) for it in items]
            health = http.get("/healthz").json()
    finally:
        stop_app(cfg)
        if args.keep:
            print(f"catalog and events kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    ok = [t for t in timings if "error" not in t]
    out = {
        "items": len(items), "posted": len(ok), "errors": [t["error"] for t in timings if "error" in t],
        "post": _percentiles([t["post_s"] for t in ok]),
        "notes": sorted({t["note"] for t in ok if t.get("note")}),
        "config": {"file": args.config, "overrides": overrides, "run_dir": cfg.run_dir, "k": k,
                   "stable": args.stable, "timeout_s": args.timeout,
                   "retrieval_replicas": cfg.serve.retrieval_replicas,
                   "catalog_refresh_s": cfg.serve.catalog_refresh_s, "use_ranker": cfg.serve.use_ranker},
        "catalog": health.get("catalog"),
        "per_item": timings,
    }
    for path in PATHS:
        first = [t[path]["first_s"] for t in ok if t[path]["first_s"] is not None]
        stable = [t[path]["stable_s"] for t in ok if t[path]["stable_s"] is not None]
        out[path] = {"appeared": len(first), "stable": len(stable), "first": _percentiles(first),
                     "to_stable": _percentiles(stable),
                     "rank_p50": float(np.median([t[path]["rank"] for t in ok if t[path]["rank"] is not None]))
                     if first else None}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"posted {out['posted']}/{out['items']} items, POST p50 {out['post']['p50_s']} s; "
          f"{cfg.serve.retrieval_replicas} retrieval replicas, refresh {cfg.serve.catalog_refresh_s} s")
    for path in PATHS:
        r = out[path]
        print(f"{path:8s} appeared {r['appeared']}/{out['posted']}: first p50 {r['first']['p50_s']} s, "
              f"p90 {r['first']['p90_s']} s; {args.stable} in a row p50 {r['to_stable']['p50_s']} s, "
              f"p90 {r['to_stable']['p90_s']} s; rank p50 {r['rank_p50']}")
    for note in out["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
