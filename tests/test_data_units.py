"""Unit tests of the data steps (no Ray): validation, labels, dedup, k-core, split, negatives,
id maps, text, and the source parsers on tiny fixture files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rayrec.data import build, idmap
from rayrec.data.config import CatalogSource, ColumnMapping, DataConfig, SyntheticWorldConfig
from rayrec.data.sources import detect_kind, plan_source, read_chunk
from rayrec.data.text import EMPTY_HISTORY, item_text, render_histories, render_history
from rayrec.data.validate import label, parse_timestamps, user_buckets, validate
from rayrec.errors import DataError


def raw_table(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    names = ("user_id", "item_id", "timestamp", "rating", "event")
    t = {n: pa.array(list(c), pa.string()) for n, c in zip(names, cols, strict=True)}
    t["_row"] = pa.array(np.arange(len(rows)) + 2, pa.int64())
    return pa.table(t)


def read_all(plan) -> tuple[pa.Table, pa.Table]:
    parts = [read_chunk(c) for c in plan.chunks]
    return pa.concat_tables([p[0] for p in parts]), pa.concat_tables([p[1] for p in parts])


# ----------------------------------------------------------------------------- validation


def test_validate_rejects_each_bad_row_with_its_reason():
    raw = raw_table([
        ("1", "10", "1000", "4.5", None),
        ("u1", "10", "1000", "4", None),  # non-numeric user
        ("1", "", "1000", "4", None),  # missing item
        ("1", "10", "yesterday", "4", None),  # bad timestamp
        ("1", "10", "1000", "great", None),  # bad rating
        ("1", "99", "1000", "3", None),  # not in catalog
        (" 007", "10", "2021-01-02T03:04:05", "1", None),  # ISO time, padded id
        ("2", "11", "1600000000123", "2.0", None),  # epoch milliseconds
        ("3", "10", "1000.7", "5", None),  # decimal seconds
    ])
    good, rejects = validate(raw, "f.csv", id_type="int", has_rating=True,
                             catalog_ids=pa.array(["10", "11"]))
    assert rejects["reason"].to_pylist() == [
        "bad_user_id", "missing_field", "bad_timestamp", "bad_rating", "item_not_in_catalog"]
    assert rejects["row"].to_pylist() == [3, 4, 5, 6, 7]
    assert rejects["raw"][0].as_py() == "u1,10,1000,4,"
    assert set(rejects["source"].to_pylist()) == {"f.csv"}
    assert good["user_id"].to_pylist() == ["1", "7", "2", "3"]
    assert good["timestamp"].to_pylist() == [1000, 1609556645, 1600000000, 1000]
    assert good["rating"].to_pylist() == [4.5, 1.0, 2.0, 5.0]


def test_validate_event_logs_and_string_ids():
    raw = raw_table([("a", "x", "5", None, "click"), ("b", "y", "6", None, None),
                     ("", "y", "6", None, "view")])
    good, rejects = validate(raw, "e", id_type="string", has_rating=False, has_event=True)
    assert good["user_id"].to_pylist() == ["a"]
    assert rejects["reason"].to_pylist() == ["missing_field", "missing_field"]


def test_parse_timestamps_flags_garbage_and_negative():
    ts, ok = parse_timestamps(pa.array(["12", "-5", "nope", None, "2020-01-01"]))
    assert ok.tolist() == [True, False, False, False, True]
    assert ts[4] == 1577836800


def test_label_by_threshold_and_events():
    t = pa.table({"rating": pa.array([5.0, 3.0, None, None], pa.float32()),
                  "event": pa.array([None, None, "click", "impression"])})
    assert label(t, None, ["click"]).tolist() == [1, 1, 1, 0]
    assert label(t, 4.0, ["click"]).tolist() == [1, 0, 1, 0]
    assert label(t, 4.0, ["impression"]).tolist() == [1, 0, 0, 1]


def test_user_buckets_are_stable_and_in_range():
    users = pa.array([str(i) for i in range(1000)])
    a, b = user_buckets(users, 7, "int"), user_buckets(users, 7, "int")
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() < 7 and len(np.unique(a)) == 7
    s = user_buckets(pa.array(["x", "y", "x"]), 4, "string")
    assert s[0] == s[2]


def test_dedup_counts_exact_duplicates_only():
    t = pa.table({"user_id": ["1", "1", "1", "2"], "item_id": ["5", "5", "5", "5"],
                  "timestamp": pa.array([1, 1, 2, 1], pa.int64()),
                  "rating": pa.array([4, 4, 4, 4], pa.float32()),
                  "event": pa.array([None] * 4, pa.string()), "label": pa.array([1] * 4, pa.int8())})
    out, n_dup = build.dedup(t)
    assert n_dup == 1 and out.num_rows == 3 and out.column_names == t.column_names


# ----------------------------------------------------------------------------- k-core


def naive_kcore(df: pd.DataFrame, k_user: int, k_item: int) -> tuple[set, set]:
    df = df[df.label == 1]
    while True:
        n = len(df)
        df = df[df.groupby("user_id").item_id.transform("size") >= k_user]
        df = df[df.groupby("item_id").user_id.transform("size") >= k_item]
        if len(df) == n:
            return set(df.user_id), set(df.item_id)


def test_kcore_reaches_the_fixed_point():
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({"user_id": rng.zipf(1.6, n).astype(str), "item_id": rng.zipf(1.4, n).astype(str),
                       "label": (rng.random(n) < 0.8).astype(np.int8)}).drop_duplicates(["user_id", "item_id"])
    users, items, rounds = build.kcore_filter(pa.Table.from_pandas(df, preserve_index=False), 3, 3)
    exp_users, exp_items = naive_kcore(df, 3, 3)
    assert set(users.to_pylist()) == exp_users and set(items.to_pylist()) == exp_items
    assert rounds > 2  # this graph needs several rounds
    kept = df[df.user_id.isin(exp_users) & df.item_id.isin(exp_items) & (df.label == 1)]
    assert kept.groupby("user_id").size().min() >= 3 and kept.groupby("item_id").size().min() >= 3


def test_kcore_round_merges_item_counts_over_partitions():
    t = pa.table({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x", "y", "x", "y", "x"],
                  "label": pa.array([1, 1, 1, 1, 1], pa.int8())})
    parts = [build.kcore_round(t.slice(0, 2), None, 2)[1], build.kcore_round(t.slice(2), None, 2)[1]]
    keep, totals = build.merge_item_counts(parts, 2)
    assert sorted(keep.to_pylist()) == ["x", "y"]  # c (1 positive) does not count for x
    assert dict(zip(totals["item_id"].to_pylist(), totals["count"].to_pylist(), strict=True)) == {"x": 2, "y": 2}


# ----------------------------------------------------------------------------- split, histories


def test_leave_last_out_has_no_leakage():
    rng = np.random.default_rng(0)
    n = 2000
    users = np.sort(rng.integers(0, 60, n))
    ts = rng.integers(0, 50, n)
    items = rng.integers(0, 100, n)
    labels = (rng.random(n) < 0.6).astype(np.int8)
    order = np.lexsort((items, ts, users))
    users, ts, items, labels = users[order], ts[order], items[order], labels[order]
    split = build.split_leave_last_out(users, labels)
    for u in np.unique(users):
        m = users == u
        s, lab, t = split[m], labels[m], ts[m]
        pos_idx = np.flatnonzero(lab == 1)
        if len(pos_idx) >= 2:
            assert s[pos_idx[-1]] == build.TEST
            assert np.all(np.flatnonzero(s == build.TEST) >= pos_idx[-1])
        if len(pos_idx) >= 3:
            assert s[pos_idx[-2]] == build.VALID
            assert (s[lab == 1] == build.VALID).sum() == 1
            assert t[s == build.TRAIN].max(initial=-1) <= t[pos_idx[-2]]
        if len(pos_idx) >= 2:
            assert t[s != build.TEST].max(initial=-1) <= t[pos_idx[-1]]
            assert (s[lab == 1] == build.TEST).sum() == 1
        # splits are contiguous in time order: train, then valid, then test
        assert np.all(np.diff(s) >= 0)


def test_global_time_split():
    s = build.split_global_time(np.array([1, 5, 8, 9, 10]), (8, 10))
    assert s.tolist() == [0, 0, 1, 1, 2]


def test_histories_and_previous_positives():
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([10, 11, 12, 13, 20, 21])
    off, vals = build.previous_positives(users, items, 2)
    lists = [vals[off[i]:off[i + 1]].tolist() for i in range(len(users))]
    assert lists == [[], [10], [10, 11], [11, 12], [], [20]]
    split = build.split_leave_last_out(users, np.ones(6, dtype=np.int8))
    h = build.user_histories(users, items, split, 5).to_pydict()
    assert h["history"] == [[10, 11], [20]] and h["valid_item"] == [12, -1] and h["test_item"] == [13, 21]


# ----------------------------------------------------------------------------- negatives


def test_negatives_are_never_interacted_and_distinct():
    rng = np.random.default_rng(1)
    n_items = 50
    users = np.repeat(np.arange(20), 5)
    inter_items = {u: rng.choice(n_items, size=rng.integers(1, 40), replace=False) for u in range(20)}
    keys = np.unique(np.concatenate([u * n_items + v for u, v in inter_items.items()]))
    negs = build.sample_negatives(users, 8, n_items, keys, np.random.default_rng(7))
    for u, row in zip(users, negs, strict=True):
        assert len(set(row.tolist())) == len(row)
        assert not set(row.tolist()) & set(inter_items[u].tolist())
        assert len(row) == min(8, n_items - len(inter_items[u]))
    again = build.sample_negatives(users, 8, n_items, keys, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(negs, again, strict=True))


def test_negatives_when_few_items_are_left():
    keys = np.arange(45, dtype=np.int64)  # user 0 has seen items 0..44 of 50
    negs = build.sample_negatives(np.array([0, 0]), 8, 50, keys, np.random.default_rng(0))
    assert all(sorted(r.tolist()) == [45, 46, 47, 48, 49] for r in negs)


def test_hard_negatives_come_first_and_skip_positives():
    keys = np.array([0 * 20 + 3])
    negs = build.sample_negatives(np.array([0]), 4, 20, keys, np.random.default_rng(0),
                                  hard={0: np.array([3, 7, 9, 11])}, n_hard=2)
    assert negs[0][:2].tolist() == [7, 9] and 3 not in negs[0] and len(set(negs[0])) == 4


def test_build_examples_layout():
    texts = pa.array(["A", "B", "C", "D"])
    hist = pa.array([[], [0, 1]], pa.list_(pa.int64()))
    t = build.build_examples(np.array([5, 6]), np.array([2, 3]), np.array([10, 20]), hist,
                             [np.array([1, 0]), np.array([2])], texts)
    d = t.to_pydict()
    assert tuple(t.column_names) == tuple(build.EXAMPLE_SCHEMA.names)
    assert d["candidates"] == [[2, 1, 0], [3, 2]] and d["labels"] == [[1, 0, 0], [1, 0]]
    assert d["candidate_texts"] == [["C", "B", "A"], ["D", "C"]]
    assert d["history_text"] == [render_history([]), render_history(["A", "B"])]


# ----------------------------------------------------------------------------- id maps, text


def test_id_map_extend_is_append_only(tmp_path):
    first, n1 = idmap.extend(pa.array([], pa.string()), pa.array(["10", "2", "33"]), "int")
    assert first.to_pylist() == ["2", "10", "33"] and n1 == 3
    idmap.save(str(tmp_path), "items", first)
    loaded = idmap.load(str(tmp_path), "items")
    second, n2 = idmap.extend(loaded, pa.array(["1", "33", "2", "100"]), "int")
    assert second.to_pylist() == ["2", "10", "33", "1", "100"] and n2 == 2
    assert idmap.lookup(pa.array(["33", "nope"]), second).tolist() == [2, -1]


def test_render_history_scalar_and_vectorised_agree():
    lists = [[], ["Heat (1995) | Genres: Crime"], ["A", "B", "C"]]
    arr = pa.array(lists, pa.list_(pa.string()))
    assert render_histories(arr).to_pylist() == [render_history(x) for x in lists]
    assert render_history([]) == EMPTY_HISTORY
    assert render_history(["A", "B"]) == "A; B"


def test_item_text_is_concise():
    t = item_text("Toy  Story (1995)", ["Animation", "Children", "Comedy", "Fantasy"],
                  ["Pixar", "pixar", "fun", "toys", "extra"])
    assert t == "Toy Story (1995) | Genres: Animation, Children, Comedy | Tags: pixar, fun, toys"
    assert item_text("X", ["(no genres listed)"]) == "X"


# ----------------------------------------------------------------------------- sources


def write_ml100k(root, n_users=3, per_user=6):
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{10 + (u + j) % 8}\t{1 + j % 5}\t{880000000 + u * 100 + j}"
             for u in range(1, n_users + 1) for j in range(per_user)]
    lines.append("1\t2\t3")  # too few fields
    (root / "u.data").write_text("\n".join(lines) + "\n")
    flags = ["0"] * 19
    items = []
    for i in range(10, 18):
        f = flags.copy()
        f[1 + i % 18] = "1"
        items.append("|".join([str(i), f"Caf\xe9 Movie {i} (1995)", "01-Jan-1995", "", "http://x", *f]))
    (root / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))


def write_ml1m(root, n_users=3, per_user=6):
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}::{10 + (u + j) % 8}::{1 + j % 5}::{970000000 + u * 100 + j}"
             for u in range(1, n_users + 1) for j in range(per_user)]
    lines.append("1::10:5::970000000")  # broken separator
    (root / "ratings.dat").write_text("\n".join(lines) + "\n")
    movies = [f"{i}::Star Wars: Episode {i} (1977)::Action|Sci-Fi" for i in range(10, 18)]
    (root / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))


def write_mllatest(root, n_users=3, per_user=6, extra_rows=()):
    root.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{u},{10 + (u + j) % 8},{0.5 + j % 5},{1500000000 + u * 100 + j}"
        for u in range(1, n_users + 1) for j in range(per_user)] + list(extra_rows)
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    movies = ["movieId,title,genres"] + [f'{i},"Movie, The {i} (2001)",Comedy|Drama' for i in range(10, 18)]
    (root / "movies.csv").write_text("\n".join(movies) + "\n")
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,Funny,1\n2,10,funny,2\n2,10,dark,3\n")


def test_ml100k_parser(tmp_path):
    write_ml100k(tmp_path)
    cfg = DataConfig(path=str(tmp_path))
    assert detect_kind(cfg) == "ml-100k"
    plan = plan_source(cfg)
    raw, rejects = read_all(plan)
    assert raw.num_rows == 18 and rejects["reason"].to_pylist() == ["wrong_field_count"]
    assert rejects["row"].to_pylist() == [19]
    cat = plan.catalog.to_pydict()
    assert cat["title"][0] == "Caf\xe9 Movie 10 (1995)"
    assert cat["text"][0] == "Caf\xe9 Movie 10 (1995) | Genres: Horror"


def test_ml1m_parser(tmp_path):
    write_ml1m(tmp_path)
    plan = plan_source(DataConfig(path=str(tmp_path), source="movielens"))
    assert plan.kind == "ml-1m"
    raw, rejects = read_all(plan)
    assert raw.num_rows == 18 and rejects["reason"].to_pylist() == ["wrong_field_count"]
    assert raw["rating"].to_pylist()[:2] == ["1", "2"]
    assert plan.catalog["title"][0].as_py() == "Star Wars: Episode 10 (1977)"
    assert plan.catalog["category"][0].as_py() == "Action"


def test_mllatest_parser_with_tags_and_chunked_reading(tmp_path):
    write_mllatest(tmp_path, n_users=40, per_user=10)
    plan = plan_source(DataConfig(path=str(tmp_path), read_chunk_bytes=1024))
    assert plan.kind == "ml-latest" and len(plan.chunks) > 5
    raw, rejects = read_all(plan)
    assert raw.num_rows == 400 and rejects.num_rows == 0  # every line exactly once
    assert sorted(zip(raw["user_id"].to_pylist(), raw["timestamp"].to_pylist(), strict=True)) == sorted(
        (str(u), str(1500000000 + u * 100 + j)) for u in range(1, 41) for j in range(10))
    text = dict(zip(plan.catalog["item_id"].to_pylist(), plan.catalog["text"].to_pylist(), strict=True))
    assert text["10"] == "Movie, The 10 (2001) | Genres: Comedy, Drama | Tags: funny, dark"


def test_generic_csv_with_column_mapping_extra_columns_and_bad_encoding(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes(b"who,what,when,kind,extra\n1,5,100,click,x\n2,6,101,view,y\n\xff\xfe,7,102,click,z\n"
                  b"3,8,103\n")
    cfg = DataConfig(path=str(p), columns=ColumnMapping(user="who", item="what", timestamp="when",
                                                        rating=None, event="kind"))
    plan = plan_source(cfg)
    assert plan.kind == "events" and plan.extra_columns == {str(p): ["extra"]}
    raw, rejects = read_all(plan)
    assert raw["user_id"].to_pylist() == ["1", "2"] and raw["event"].to_pylist() == ["click", "view"]
    assert sorted(rejects["reason"].to_pylist()) == ["bad_encoding", "wrong_field_count"]
    assert sorted(rejects["row"].to_pylist()) == [4, 5]


def test_generic_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"u": 1, "i": 2, "t": 10, "r": 4.0}) + "\n{broken\n" + json.dumps({"u": 3, "i": 4, "t": 11, "r": 2}) + "\n")
    pq.write_table(pa.table({"u": [5, 6], "i": [7, 8], "t": [12, 13], "r": [1.0, 5.0]}), tmp_path / "b.parquet")
    cfg = DataConfig(path=str(tmp_path), columns=ColumnMapping(user="u", item="i", timestamp="t", rating="r"))
    plan = plan_source(cfg)
    raw, rejects = read_all(plan)
    assert sorted(raw["user_id"].to_pylist()) == ["1", "3", "5", "6"]
    assert rejects["reason"].to_pylist() == ["bad_json"] and rejects["row"].to_pylist() == [2]


def test_catalog_for_generic_logs(tmp_path):
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp,rating\n1,5,1,3\n")
    (tmp_path / "cat.jsonl").write_text(json.dumps({"id": 5, "name": "Lamp", "cat": "Home", "desc": "bright"}) + "\n")
    cfg = DataConfig(path=str(tmp_path / "log.csv"), catalog=CatalogSource(
        path=str(tmp_path / "cat.jsonl"), item="id", title="name", category="cat", text_fields=["name", "desc"]))
    plan = plan_source(cfg)
    assert plan.catalog.to_pydict() == {"item_id": ["5"], "title": ["Lamp"], "category": ["Home"],
                                        "text": ["Lamp | Genres: Home | bright"]}


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"user_id,item_id\n1,2\n", "missing column")])
def test_unreadable_or_incomplete_files_name_the_file(tmp_path, content, problem):
    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    with pytest.raises(DataError, match=rf"bad\.csv.*{problem}"):
        plan_source(DataConfig(path=str(p)))


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"x\.parquet: cannot read Parquet"):
        plan_source(DataConfig(path=str(tmp_path)))


def test_synthetic_chunks_are_deterministic_and_malformed():
    from rayrec.data.synthetic import generate_chunk
    from rayrec.data.world import SyntheticWorld

    cfg = SyntheticWorldConfig(n_users=50, n_items=40, n_events=5000, malformed_fraction=0.05)
    world = SyntheticWorld.generate(cfg)
    a = generate_chunk(world, cfg, 0, np.arange(50), 5000)
    b = generate_chunk(world, cfg, 0, np.arange(50), 5000)
    assert a.equals(b) and a.num_rows == 5000
    assert not a.equals(generate_chunk(world, cfg, 1, np.arange(50), 5000))
    good, rejects = validate(a.append_column("rating", pa.nulls(5000, pa.string())).append_column(
        "_row", pa.array(np.arange(5000))), "s", has_rating=False, has_event=True,
        catalog_ids=pa.array([str(i) for i in range(40)]))
    assert {"bad_user_id", "bad_timestamp", "missing_field", "item_not_in_catalog"} <= set(
        rejects["reason"].to_pylist())
    events = set(good["event"].to_pylist())
    assert events == {"click", "impression"}
    # clicks follow the world's probabilities: more clicks on higher-probability impressions
    users = np.asarray(good["user_id"].to_numpy(zero_copy_only=False)).astype(int)
    items = np.asarray(good["item_id"].to_numpy(zero_copy_only=False)).astype(int)
    p = world.click_probability(users, items)
    clicked = np.asarray(good["event"].to_numpy(zero_copy_only=False)) == "click"
    assert p[clicked].mean() > p[~clicked].mean()
    assert abs(clicked.mean() - p.mean()) < 0.03


def test_tie_order_random_is_a_seeded_order_of_same_second_interactions():
    """#24's sensitivity row: within a timestamp, "item" keeps item order (the held-out item is
    the highest id of its second), "random" a seeded hash order, the same in every partition."""
    from rayrec.data.pipeline import _Ctx, _tie_key

    def ctx(order: str, seed: int = 0) -> _Ctx:
        return _Ctx("out", "work", 1, "int", 1, 1, "leave_last_out", 20, 4, 99, 0, seed, (0.8, 0.9), order)

    u, i = np.repeat(np.arange(50), 8), np.tile(np.arange(8), 50)
    np.testing.assert_array_equal(_tie_key(u, i, ctx("item")), i)
    a, b = _tie_key(u, i, ctx("random")), _tie_key(u, i, ctx("random"))
    np.testing.assert_array_equal(a, b)  # deterministic
    last = [int(np.argmax(a[u == k])) for k in range(50)]  # which item comes last in each "second"
    assert len(set(last)) > 4  # not the highest id every time
    assert not np.array_equal(np.argsort(_tie_key(u, i, ctx("random", 1))), np.argsort(a))  # seeded
