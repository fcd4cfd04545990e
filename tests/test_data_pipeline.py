"""The Ray Data preprocessing pipeline end to end on tiny inputs (real Ray, session cluster)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rayrec.config import load_config
from rayrec.data import store
from rayrec.data.pipeline import run_preprocess
from rayrec.data.schema import (
    EXAMPLE_COLUMNS,
    HISTORY_COLUMNS,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    REJECT_COLUMNS,
    USER_COLUMNS,
)
from rayrec.data.world import SyntheticWorld
from rayrec.errors import DataError
from test_data_units import write_ml1m, write_ml100k, write_mllatest


def make_log(n_users: int, n_items: int, per_user: int, seed: int = 0, user_offset: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(user_offset, user_offset + n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        for j, i in enumerate(items):
            rows.append({"uid": str(u), "iid": str(i + 100), "ts": str(1_000_000 + u * 1000 + j * 10),
                         "kind": "click" if rng.random() < 0.7 else "skip", "junk": "x"})
    return pd.DataFrame(rows)


def config(tmp_path, **over):
    base = {"run_dir": str(tmp_path / "run"), "preprocess.num_negatives": 3,
            "preprocess.eval_negatives": 5, "preprocess.min_user_interactions": 3}
    base.update(over)
    return load_config(None, base)


def check_layout(d: str, manifest: dict) -> None:
    assert tuple(store.load_items(d).columns) == ITEM_COLUMNS
    assert tuple(store.load_users(d).columns) == USER_COLUMNS
    assert tuple(store.load_histories(d).columns) == HISTORY_COLUMNS
    assert tuple(store.load_rejects(d).columns) == REJECT_COLUMNS
    for split in ("train", "valid", "test"):
        assert tuple(store.read_pandas(d, "interactions", split).columns) == INTERACTION_COLUMNS
        assert tuple(store.read_pandas(d, "examples", split).columns) == EXAMPLE_COLUMNS
    acc = manifest["accounting"]
    assert acc["balanced"] and acc["rows_read"] == (acc["rows_kept"] + acc["rows_rejected"]
                                                    + acc["duplicates_removed"] + acc["rows_filtered"])
    with open(f"{d}/manifest.json") as f:
        assert json.load(f)["counts"] == manifest["counts"]


def check_no_leakage_and_negatives(d: str) -> None:
    inter = pd.concat([store.read_pandas(d, "interactions", s).assign(split=s)
                       for s in ("train", "valid", "test")])
    pos = inter[inter.label == 1]
    last = {s: pos[pos.split == s].groupby("user_idx").timestamp.min() for s in ("valid", "test")}
    train_max = inter[inter.split == "train"].groupby("user_idx").timestamp.max()
    for s in ("valid", "test"):
        common = train_max.index.intersection(last[s].index)
        assert (train_max[common] <= last[s][common]).all()
    seen = inter.groupby("user_idx").item_idx.agg(set).to_dict()
    for s in ("train", "valid", "test"):
        ex = store.read_pandas(d, "examples", s)
        for u, cands, labels in zip(ex.user_idx, ex.candidates, ex.labels, strict=True):
            assert labels[0] == 1.0 and cands[0] in seen[u] and not set(cands[1:]) & seen[u]
            assert len(set(cands)) == len(cands)


def test_generic_log_with_malformed_rows_and_catalog(tmp_path, ray_cluster):
    log = make_log(30, 40, 8)
    bad = pd.DataFrame([
        {"uid": "u7", "iid": "101", "ts": "1", "kind": "click", "junk": ""},  # non-numeric id
        {"uid": "1", "iid": "101", "ts": "soon", "kind": "click", "junk": ""},  # bad timestamp
        {"uid": "1", "iid": "", "ts": "5", "kind": "click", "junk": ""},  # missing item
        {"uid": "1", "iid": "999", "ts": "5", "kind": "click", "junk": ""},  # not in catalog
    ])
    full = pd.concat([log, bad, log.iloc[:5]], ignore_index=True)  # + 5 exact duplicates
    full.to_csv(tmp_path / "events.csv", index=False)
    with open(tmp_path / "events.csv", "a") as f:
        f.write("2,103\n")  # too few fields
    pd.DataFrame({"item": [str(i + 100) for i in range(40)], "name": [f"Thing {i}" for i in range(40)],
                  "cat": ["A", "B"] * 20}).to_parquet(tmp_path / "catalog.parquet")
    cfg = config(tmp_path, **{
        "data.path": str(tmp_path / "events.csv"),
        "data.columns": {"user": "uid", "item": "iid", "timestamp": "ts", "rating": None, "event": "kind"},
        "data.catalog": {"path": str(tmp_path / "catalog.parquet"), "item": "item", "title": "name",
                         "category": "cat", "text_fields": ["name"]},
        "preprocess.positive_events": ["click"]})
    m = run_preprocess(cfg)
    d = cfg.data_dir
    check_layout(d, m)
    c = m["counts"]
    assert c["rows_read"] == len(full) + 1
    assert c["rejected_by_reason"] == {"bad_timestamp": 1, "bad_user_id": 1, "item_not_in_catalog": 1,
                                       "missing_field": 1, "wrong_field_count": 1}
    assert c["duplicates_removed"] == 5
    rej = store.load_rejects(d)
    assert set(rej.reason) == set(c["rejected_by_reason"]) and (rej.raw != "").all()
    assert m["source"]["extra_columns"] == {str(tmp_path / "events.csv"): ["junk"]}
    # labels: "skip" rows are kept as label-0 interactions, positives are the clicks
    inter = pd.concat([store.read_pandas(d, "interactions", s) for s in ("train", "valid", "test")])
    assert set(inter.label) == {0.0, 1.0} and set(inter.event) == {"click", "skip"}
    assert c["positives"]["test"] == c["users"]
    check_no_leakage_and_negatives(d)
    items = store.load_items(d)
    assert items.text.str.startswith("Thing").all() and list(items.item_idx) == list(range(len(items)))
    ex = store.read_pandas(d, "examples", "valid")
    assert all(len(x) == 6 for x in ex.candidates)
    texts = items.text.to_numpy()
    row = ex.iloc[0]
    assert list(row.candidate_texts) == list(texts[row.candidates])
    assert row.history_text == "; ".join(texts[row.history])


def test_id_mapping_is_stable_across_runs(tmp_path, ray_cluster):
    first = make_log(20, 30, 8, seed=1)
    first.to_csv(tmp_path / "log.csv", index=False)
    over = {"data.path": str(tmp_path / "log.csv"),
            "data.columns": {"user": "uid", "item": "iid", "timestamp": "ts", "rating": None,
                             "event": "kind"}, "preprocess.positive_events": ["click"]}
    cfg = config(tmp_path, **over)
    run_preprocess(cfg)
    d = cfg.data_dir
    users1, items1 = store.load_users(d), store.load_items(d)
    more = pd.concat([first, make_log(10, 60, 8, seed=2, user_offset=1000)], ignore_index=True)
    more.to_csv(tmp_path / "log.csv", index=False)
    # hard negatives (e.g. from retrieval) for user 0: one it interacted with, two it did not
    seen = set(pd.concat([store.read_pandas(d, "interactions", s) for s in ("train", "valid", "test")])
               .query("user_idx == 0").item_idx)
    fresh = [i for i in range(len(items1)) if i not in seen][:2]
    pq.write_table(pa.table({"user_idx": [0], "items": [[min(seen), *fresh]]}), tmp_path / "hard.parquet")
    cfg = config(tmp_path, **over, **{"preprocess.hard_negatives": str(tmp_path / "hard.parquet"),
                                      "preprocess.num_hard_negatives": 2})
    m2 = run_preprocess(cfg)
    ex = store.read_pandas(d, "examples", "train").query("user_idx == 0")
    assert len(ex) and all(list(c[1:3]) == fresh for c in ex.candidates)
    users2, items2 = store.load_users(d), store.load_items(d)
    assert users2.user_id[: len(users1)].tolist() == users1.user_id.tolist()
    assert items2.item_id[: len(items1)].tolist() == items1.item_id.tolist()
    assert m2["counts"]["new_users"] == len(users2) - len(users1) > 0
    assert m2["counts"]["new_items"] == len(items2) - len(items1) > 0
    assert users2.user_idx.tolist() == list(range(len(users2)))


@pytest.mark.parametrize("writer", [write_ml100k, write_ml1m, write_mllatest])
def test_movielens_formats_end_to_end(tmp_path, ray_cluster, writer):
    writer(tmp_path / "ml", n_users=6, per_user=7)
    cfg = config(tmp_path, **{"data.path": str(tmp_path / "ml"), "preprocess.eval_negatives": 2})
    m = run_preprocess(cfg)
    check_layout(cfg.data_dir, m)
    c = m["counts"]
    assert c["users"] == 6 and c["interactions"] == {"train": 30, "valid": 6, "test": 6}
    assert c["rows_rejected"] == (0 if writer is write_mllatest else 1)
    check_no_leakage_and_negatives(cfg.data_dir)
    assert store.load_items(cfg.data_dir).text.str.contains("Genres").all()


def test_unreadable_file_stops_with_the_file_name(tmp_path, ray_cluster):
    pq.write_table(pa.table({"user_id": ["1"], "item_id": ["2"], "timestamp": ["3"], "rating": ["4"]}),
                   tmp_path / "good.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"broken\.parquet"):
        run_preprocess(config(tmp_path, **{"data.path": str(tmp_path)}))
    (tmp_path / "broken.parquet").unlink()
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        run_preprocess(config(tmp_path, **{"data.path": str(tmp_path)}))


def test_read_failure_inside_a_worker_names_the_file(tmp_path, ray_cluster):
    from rayrec.data.pipeline import _Ctx, _ingest
    from rayrec.data.sources import Chunk, SourcePlan

    gone = str(tmp_path / "vanished.csv")
    chunk = Chunk(gone, "csv", 0, 100, ("user_id", "item_id", "timestamp"), True, "utf-8",
                  (("user_id", "user_id"), ("item_id", "item_id"), ("timestamp", "timestamp")))
    plan = SourcePlan("events", str(tmp_path), [gone], [chunk], None)
    cfg = config(tmp_path)
    ctx = _Ctx(str(tmp_path / "out"), str(tmp_path / "out" / "_work"), 2, "int", 1, 1,
               "leave_last_out", 5, 1, 1, 0, 0)
    with pytest.raises(DataError, match=r"vanished\.csv: cannot read csv"):
        _ingest(plan, cfg, ctx)


def test_synthetic_default_source(tmp_path, ray_cluster):
    cfg = config(tmp_path, **{"data.synthetic": {"n_users": 200, "n_items": 80, "n_events": 12000,
                                                 "malformed_fraction": 0.01, "rows_per_chunk": 4000},
                              "preprocess.split": "global_time", "preprocess.min_item_interactions": 20})
    m = run_preprocess(cfg)
    d = cfg.data_dir
    check_layout(d, m)
    c = m["counts"]
    # the distributed k-core reached its fixed point: every kept user and item is above threshold
    inter = pd.concat([store.read_pandas(d, "interactions", s) for s in ("train", "valid", "test")])
    pos = inter[inter.label == 1]
    assert pos.groupby("user_idx").size().min() >= 3 and pos.groupby("item_idx").size().min() >= 20
    assert pos.user_idx.nunique() == c["users"] and pos.item_idx.nunique() == c["items"]
    assert c["kcore_rounds"] >= 3 and c["filtered_by_reason"]["kcore_item"] > 0
    assert m["source"]["kind"] == "synthetic" and m["source"]["chunks"] == 3
    assert c["rows_read"] == 12000 and c["rows_rejected"] > 0 and c["duplicates_removed"] > 0
    assert set(c["rejected_by_reason"]) <= {"bad_user_id", "bad_timestamp", "missing_field",
                                            "item_not_in_catalog"}
    world = SyntheticWorld.load(f"{d}/world")
    assert world.n_users == 200 and world.n_items == 80
    items = store.load_items(d)
    assert items.text.iloc[0].startswith(world.titles[int(items.item_id.iloc[0])])
    lo, hi = m["split"]["global_cuts"]
    assert store.read_pandas(d, "interactions", "train").timestamp.max() < lo
    assert store.read_pandas(d, "interactions", "test").timestamp.min() >= hi
