"""What the Serve test modules share: a tiny catalog, backbone, index and adapters, and HTTP
helpers. Each module deploys its own app (name, prefix) on the session Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")

API_KEY = "test-key-0123456789"
API_KEY_2 = "test-key-second-client"
CATEGORIES = ["Comedy", "Drama", "Sci-Fi", "Horror"]
N_ITEMS, N_USERS = 40, 8


def needs(*modules: str) -> None:
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            pytest.skip(f"{m} has not landed yet ({e})")




def write_tiny_dataset(data_dir: Path, n_items: int = N_ITEMS) -> None:
    """A catalog, users and histories in the layout of rayrec.data.schema."""
    from rayrec.data import schema

    data_dir.mkdir(parents=True, exist_ok=True)
    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n_items)]
    titles = [f"{c} Story {i}" for i, c in enumerate(cats)]
    items = pd.DataFrame({
        "item_idx": np.arange(n_items, dtype=np.int64),
        "item_id": [str(1000 + i) for i in range(n_items)],
        "title": titles,
        "category": cats,
        "text": [f"{t} | Genres: {c}" for t, c in zip(titles, cats, strict=True)],
        "popularity": np.arange(n_items, 0, -1).astype(np.int64),  # item 0 most popular
    })
    items.to_parquet(data_dir / schema.ITEMS_FILE, index=False)
    users = pd.DataFrame({
        "user_idx": np.arange(N_USERS, dtype=np.int64),
        "user_id": [f"u{i}" for i in range(N_USERS)],
        "n_train": np.full(N_USERS, 5, dtype=np.int64),
    })
    users.to_parquet(data_dir / schema.USERS_FILE, index=False)
    hist = pd.DataFrame({
        "user_idx": np.arange(N_USERS, dtype=np.int64),
        # user i likes category i % 4: five items of it
        "history": [[int(j) for j in range(i % 4, n_items, 4)][:5] for i in range(N_USERS)],
        "valid_item": np.full(N_USERS, -1, dtype=np.int64),
        "test_item": np.full(N_USERS, -1, dtype=np.int64),
    })
    (data_dir / schema.HISTORIES_DIR).mkdir(exist_ok=True)
    hist.to_parquet(data_dir / schema.HISTORIES_DIR / "part-0.parquet", index=False)
    (data_dir / schema.MANIFEST_FILE).write_text(
        json.dumps({"schema_version": schema.SCHEMA_VERSION, "counts": {"items": n_items, "users": N_USERS}})
    )


def make_serving_env(root: Path, n_items: int = N_ITEMS, **extra) -> dict:
    """Tiny dataset + backbone + index + two adapter versions under ``root``; returns the
    build_app overrides (``extra`` on top), the config, the adapters and ``root``."""
    needs("rayrec.models.ranker", "rayrec.models.tiny", "rayrec.retrieval.index", "rayrec.data.text")
    from rayrec.config import load_config
    from rayrec.models.ranker import build_ranker, save_ranker
    from rayrec.models.tiny import make_tiny_backbone
    from rayrec.retrieval.index import build_index

    backbone = make_tiny_backbone("bert", root / "tiny_bert")
    overrides = {
        "run_dir": str(root / "run"),
        "model.backbone": str(backbone),
        "model.max_length": 64,
        "serve.ranking.num_cpus": 0.5,
        "serve.ranking.autoscaling.min_replicas": 1,
        "serve.ranking.autoscaling.max_replicas": 1,
        "serve.retrieval_num_cpus": 0.25,
        "serve.ingress_num_cpus": 0.1,
        "serve.rank_candidates": 12,
        "serve.max_k": 20,
        "serve.max_body_bytes": 4096,
        "serve.rank_timeout_s": 4.0,  # generous: the test machine is shared
        "serve.event_flush_rows": 1000,
        "serve.event_flush_interval_s": 60.0,  # only shutdown flushes: the test checks that path
        "serve.api_keys_file": str(root / "keys.txt"),
    } | extra
    cfg = load_config(None, overrides)
    write_tiny_dataset(Path(cfg.data_dir), n_items)
    build_index(cfg)
    adapters = {}
    for seed in (1, 2):
        model, collator = build_ranker(cfg.model, seed=seed)
        adapters[seed] = save_ranker(root / f"adapter_v{seed}", cfg.model, model, collator)
    (root / "keys.txt").write_text(f"# test keys\n{API_KEY}\n{API_KEY_2}\n")
    return {"overrides": overrides, "cfg": cfg, "adapters": adapters, "root": root}


def vid(checkpoint: str) -> str:
    """The opaque id answers and /healthz give an adapter (never its path)."""
    from rayrec.checkpoints import version_id

    return version_id(str(checkpoint), "")


def wait_ranker(url: str, pred, timeout: float = 90.0) -> dict:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=10)
            if r.status_code in (200, 503):
                last = r.json()
                if pred(last["ranker"]):
                    return last
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"ranker never reached the expected state; last healthz {last}")


def post(url, path, body, **kw):
    return httpx.post(f"{url}{path}", json=body, timeout=30, **kw)


def rayrec_serve(address: str, sets: dict, env: dict | None = None) -> tuple[subprocess.Popen, list[str], threading.Event]:
    """Start `rayrec serve --address ... --set k=v ...`; returns the process, its output lines
    (collected by a thread) and an event set once it prints its URL. ``env``: extra environment
    variables (e.g. the client keys)."""
    cmd = [str(Path(sys.executable).parent / "rayrec"), "serve", "--address", address]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}))
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            if line.startswith("rayrec endpoint: "):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, output, ready
