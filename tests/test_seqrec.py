"""The sequential retriever: learns order, reloads identically, its index equals brute force,
and the full-catalog evaluation never inserts the held-out item."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rayrec.config import load_config
from rayrec.data import schema

N_ITEMS, N_USERS, SEQ_LEN = 24, 90, 12


def write_cyclic_dataset(data_dir: Path, seed: int = 0, titles: list[str] | None = None,
                         n_users: int = N_USERS, seq_len: int = SEQ_LEN) -> None:
    """Every user walks the catalog in order from a random start: the next item is always
    (previous + 1) mod N. The last two steps are the validation and test items. ``titles``:
    the catalog (default: N_ITEMS items "Item i")."""
    titles = titles or [f"Item {i}" for i in range(N_ITEMS)]
    n_items = len(titles)
    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "item_idx": np.arange(n_items, dtype=np.int64), "item_id": [str(100 + i) for i in range(n_items)],
        "title": titles, "category": ["c"] * n_items,
        "text": titles, "popularity": np.full(n_items, 10, dtype=np.int64),
    }).to_parquet(data_dir / schema.ITEMS_FILE, index=False)
    pd.DataFrame({"user_idx": np.arange(n_users, dtype=np.int64), "user_id": [f"u{u}" for u in range(n_users)],
                  "n_train": np.full(n_users, seq_len - 2, dtype=np.int64)}).to_parquet(
        data_dir / schema.USERS_FILE, index=False)
    rows = {s: [] for s in schema.SPLITS}
    hist = []
    for u in range(n_users):
        walk = (rng.integers(n_items) + np.arange(seq_len)) % n_items
        for t, item in enumerate(walk):
            split = "train" if t < seq_len - 2 else ("valid" if t == seq_len - 2 else "test")
            rows[split].append((u, int(item), 1000 + t, 1.0, np.nan, "rating"))
        hist.append((u, [int(i) for i in walk[: seq_len - 2]], int(walk[-2]), int(walk[-1])))
    for split, r in rows.items():
        d = data_dir / schema.INTERACTIONS_DIR / split
        d.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(r, columns=list(schema.INTERACTION_COLUMNS)).astype(
            {"label": "float32", "rating": "float32"})
        df.to_parquet(d / "part-0.parquet", index=False)
    d = data_dir / schema.HISTORIES_DIR
    d.mkdir(exist_ok=True)
    pd.DataFrame(hist, columns=list(schema.HISTORY_COLUMNS)).to_parquet(d / "part-0.parquet", index=False)
    (data_dir / schema.MANIFEST_FILE).write_text(json.dumps({"schema_version": schema.SCHEMA_VERSION}))


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """A tiny retriever trained with Ray Train (2 DDP workers) on the cyclic world."""
    from rayrec.seqrec.trainer import run_retriever_training

    root = tmp_path_factory.mktemp("seqrec")
    write_cyclic_dataset(root / "run" / "data")
    cfg = load_config(overrides={
        "run_dir": str(root / "run"),
        "retriever.max_len": 8, "retriever.dim": 32, "retriever.layers": 1, "retriever.dropout": 0.0,
        "retriever.batch_size": 16, "retriever.lr": 0.01, "retriever.max_epochs": 60,
        "retriever.eval_every_epochs": 10, "retriever.num_workers": 2, "retriever.torch_threads": 1,
    })
    return cfg, run_retriever_training(cfg)


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_retriever_learns_next_item_pattern(trained) -> None:
    from rayrec.seqrec.data import load_sequences
    from rayrec.seqrec.scorer import SeqRetriever

    cfg, result = trained
    assert result["valid_ndcg@10"] > 0.9
    test = load_sequences(cfg.data_dir, "test")
    tops = SeqRetriever(cfg.retriever_model_dir).retrieve(test["history"].tolist(), 1)
    hr1 = np.mean([int(t[0][0]) == y for t, y in zip(tops, test["target"], strict=True)])
    assert hr1 >= 0.95, hr1


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_checkpoint_reloads_into_identical_scorer(trained) -> None:
    from rayrec.seqrec.model import load_retriever
    from rayrec.seqrec.scorer import SeqRetriever

    cfg, result = trained
    histories = [[1, 2, 3], [5], [20, 21, 22, 23, 0]]
    a = SeqRetriever(cfg.retriever_model_dir)
    b, _ = load_retriever(result["checkpoint"])  # the Ray Train checkpoint the artifact came from
    with torch.no_grad():
        from rayrec.seqrec.data import batch_inputs

        ub = b.user_vectors(batch_inputs(histories, b.max_len, b.pad)).numpy()
    np.testing.assert_array_equal(a.user_vectors(histories), ub)
    np.testing.assert_array_equal(a.item_vectors(), b.item_vectors()[:N_ITEMS].detach().numpy())


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_index_returns_the_same_top_k_as_brute_force(trained) -> None:
    from rayrec.retrieval.index import ItemIndex
    from rayrec.seqrec.scorer import SeqRetriever

    cfg, _ = trained
    rng = np.random.default_rng(1)
    histories = [rng.choice(N_ITEMS, size=rng.integers(1, 8), replace=False).tolist() for _ in range(30)]
    exact = SeqRetriever(cfg.retriever_model_dir).retrieve(histories, 10)
    indexed = SeqRetriever(cfg.retriever_model_dir, ItemIndex.load(cfg.retriever_index_dir)).retrieve(histories, 10)
    for (ie, se), (ii, si) in zip(exact, indexed, strict=True):
        np.testing.assert_array_equal(ie, ii)
        np.testing.assert_allclose(se, si, rtol=1e-4, atol=1e-4)
        assert len(ie) == 10


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_full_catalog_evaluation_never_inserts_the_held_out_item(trained) -> None:
    from rayrec.evaluation.baselines import popularity_top
    from rayrec.evaluation.fullcatalog import run_full_catalog
    from rayrec.seqrec.data import load_sequences
    from rayrec.seqrec.scorer import SeqRetriever

    cfg, _ = trained
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"rank_depth": 3, "bootstrap": 20})})
    result = run_full_catalog(cfg)
    per_user = pd.read_parquet(result["files"]["per_user"]).sort_values("user_idx")
    test = load_sequences(cfg.data_dir, "test")
    assert result["protocol"]["users"] == N_USERS and set(per_user["model"]) == {"popularity", "als", "retriever"}
    tops = SeqRetriever(cfg.retriever_model_dir).retrieve(test["history"].tolist(), 3)
    found = [float(y in t[0]) for t, y in zip(tops, test["target"], strict=True)]
    np.testing.assert_array_equal(per_user[per_user["model"] == "retriever"]["recall@3"].to_numpy(), found)
    # Popularity ties every item: a held-out item outside its top-3 must stay a miss.
    pop = np.full(N_ITEMS, 10.0)
    found = [float(y in popularity_top(pop, 3, set(h.tolist()))) for h, y in zip(test["history"], test["target"], strict=True)]
    np.testing.assert_array_equal(per_user[per_user["model"] == "popularity"]["recall@3"].to_numpy(), found)
    assert result["models"]["retriever"]["ndcg@10"] > 0.95 > result["models"]["popularity"]["ndcg@10"]


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_llamarec_mask_hides_only_the_input_window(trained) -> None:
    """#24: evaluate.mask=input_window (LlamaRec's protocol) masks only the newest mask_window
    items of each input: no system lists them, while older seen items may be listed."""
    from rayrec.evaluation.fullcatalog import run_full_catalog
    from rayrec.seqrec.data import load_sequences

    cfg, _ = trained
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={
        "mask": "input_window", "mask_window": 2, "bootstrap": 0, "rank_retrieved": False,
        "out": str(Path(cfg.eval_dir).parent / "eval_window")})})
    result = run_full_catalog(cfg)
    per_user = pd.read_parquet(result["files"]["per_user"])
    history = load_sequences(cfg.data_dir, "test").set_index("user_idx")["history"]
    older_listed = 0
    for row in per_user.itertuples(index=False):
        h = history[row.user_idx]
        assert not set(row.top) & set(h[-2:].tolist()), (row.model, row.user_idx)
        older_listed += bool(set(row.top) & set(h[:-2].tolist()))
    assert older_listed > 0  # the window, not every seen item, is masked
    assert "LlamaRec" in result["protocol"]["candidates_description"]


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture + one more seed)
def test_seeds_in_the_headline(trained) -> None:
    """#24: evaluate.seeds retrains every trained system per seed (a run of its own, reused when
    unchanged), evaluates the same users, and reports per seed, mean ± sd and verdicts."""
    from rayrec.recipes.seeds import SEEDS_FILE, run_seeded_evaluation, seed_config
    from rayrec.report.quality import seeds as seeds_section
    from rayrec.stages import StageRunner

    cfg, _ = trained
    cfg = cfg.model_copy(update={
        "evaluate": cfg.evaluate.model_copy(update={"seeds": 2, "bootstrap": 50, "rank_depth": 5}),
        "retriever": cfg.retriever.model_copy(update={"max_epochs": 20})})  # seed 1's own run
    stages = StageRunner(cfg)
    result = run_seeded_evaluation(cfg, stages)
    s = result["seeds"]
    assert s["n"] == 2 and [p["retriever_seed"] for p in s["per_seed"]] == [cfg.retriever.seed, cfg.retriever.seed + 1]
    assert [p["system_seed"] for p in s["per_seed"]] == [cfg.evaluate.seed, cfg.evaluate.seed + 1]
    seed1 = seed_config(cfg, 1)
    assert seed1.retriever_model_dir != cfg.retriever_model_dir and Path(seed1.retriever_model_dir).is_dir()
    mean, sd = s["mean_sd"]["retriever"]["ndcg@10"]
    assert mean > 0.5 and sd is not None
    assert {c["verdict"] for c in s["comparisons"].values()} <= {"above", "below", "on par"}
    assert s["comparisons"]["retriever_vs_popularity"]["verdict"] == "above"
    assert json.loads(Path(cfg.eval_dir, SEEDS_FILE).read_text())["n"] == 2
    assert result["models"] == json.loads(Path(cfg.eval_dir, "eval.json").read_text())["models"]  # seed 0
    lines = "\n".join(seeds_section(s))
    assert "### Over 2 seeds" in lines and "| retriever |" in lines and "above" in lines
    again = run_seeded_evaluation(cfg, StageRunner(cfg))  # seed 1's retriever: reused, same figures
    assert again["seeds"]["mean_sd"]["retriever"] == s["mean_sd"]["retriever"]


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_endpoint_top_k_equals_offline_evaluation(trained, tmp_path, monkeypatch) -> None:
    """A known user's top-K from the Serve endpoint (retrieval order, greedy) is the list the
    full-catalog evaluation scored for that user."""
    import httpx
    from ray import serve
    from rayrec.evaluation.fullcatalog import run_full_catalog
    from rayrec.models.tiny import make_tiny_backbone
    from rayrec.retrieval.index import build_index
    from rayrec.serving.control import serve_admin, start_app, stop_app

    serve.start()  # a no-op when the session's Serve runs: then its port is the one to use
    port = serve_admin().get_serve_details()["http_options"].get("port", 8000)
    cfg, _ = trained
    backbone = make_tiny_backbone("bert", tmp_path / "tiny_bert")
    cfg = load_config(overrides=cfg.model_dump(mode="json") | {
        "model.backbone": str(backbone), "model.max_length": 32, "evaluate.bootstrap": 0,
        "evaluate.out": str(tmp_path / "eval"), "evaluate.rank_retrieved": False,
        "serve.app_name": "rayrec_seqrec_test", "serve.route_prefix": "/seqrec",
        "serve.use_ranker": False, "serve.ranking.num_cpus": 0.25, "serve.retrieval_num_cpus": 0.25,
        "serve.ingress_num_cpus": 0.1, "serve.ranking.autoscaling.max_replicas": 1,
        "serve.rank_candidates": 10, "serve.default_policy": "greedy", "serve.port": port,
    })
    build_index(cfg)  # the text index: free text and the endpoint's item metadata
    per_user = pd.read_parquet(run_full_catalog(cfg)["files"]["per_user"])
    offline = per_user[per_user["model"] == "retriever"].set_index("user_idx")["top"]
    # As on a cluster without a dashboard: deployed with serve.run (no Serve REST API).
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:9")  # nothing listens there
    url = start_app(cfg)
    try:
        for u in (0, 7, 42):
            r = httpx.post(f"{url}/recommend",
                           json={"user_id": f"u{u}", "k": 5, "diversity": 0.0}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["retrieval_source"] == "sequence" and not body["degraded"]
            served = [int(i["item_id"]) - 100 for i in body["items"]]
            assert served == list(offline[u][:5]), (u, served, offline[u][:5])
    finally:
        stop_app(cfg)


def test_text_initialised_vectors_and_sampled_loss(tmp_path) -> None:
    """text_init: an item nobody interacted with still has a vector from its text; the artifact
    round-trips with its text buffer; the sampled softmax gives a finite loss and gradients."""
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.data import training_tensors
    from rayrec.seqrec.model import SASRec, load_retriever, save_retriever, sequence_loss

    rc = RetrieverConfig(max_len=6, dim=16, layers=1, text_init=True, loss="sampled", num_negatives=5)
    text = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    model = SASRec(10, rc, text)
    with torch.no_grad():
        model.item.weight.zero_()  # no collaborative signal at all: vectors come from text alone
        v = model.item_vectors()[:10]
    assert torch.linalg.matrix_rank(v) > 1 and not torch.allclose(v[0], v[1])
    save_retriever(tmp_path, model, rc)
    again, meta = load_retriever(tmp_path)
    assert meta["n_items"] == 10 and again.text_proj is not None
    torch.testing.assert_close(again.item_vectors(), model.item_vectors())
    inputs, targets = training_tensors([[1, 2, 3, 4], [5, 6]], rc.max_len, 10)
    loss = sequence_loss(model.train(), inputs, targets, rc, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.text_proj.weight.grad is not None


def test_sliding_windows_cover_every_transition_once_and_hold_validation_on_the_newest() -> None:
    """A 500-item history in 201-item windows every 200 items: each of its 499 transitions
    is in exactly one window, the newest window is the last 201 items and alone carries the
    validation item; stride 0 keeps the newest window only; short histories are one window."""
    from rayrec.seqrec.data import _user_sequence, window_bounds

    assert window_bounds(500, 201, 200) == [(299, 500), (99, 300), (0, 100)]
    assert window_bounds(500, 201, 0) == [(299, 500)]
    assert window_bounds(150, 201, 200) == [(0, 150)]
    assert window_bounds(402, 201, 200) == [(201, 402), (1, 202), (0, 2)]  # the oldest: one transition
    assert window_bounds(401, 201, 200) == [(200, 401), (0, 201)]
    group = pd.DataFrame({"user_idx": 7, "item_idx": list(range(500)) + [999],
                          "timestamp": list(range(501)), "split": [0] * 500 + [1]})
    rows = _user_sequence(group.sample(frac=1.0, random_state=0), keep=201, stride=200)
    assert rows["valid_item"].tolist() == [999, -1, -1]
    assert list(rows["items"].iloc[0]) == list(range(299, 500))
    pairs = [(int(a), int(b)) for w in rows["items"] for a, b in zip(w[:-1], w[1:], strict=True)]
    assert sorted(pairs) == [(i, i + 1) for i in range(499)]


def test_cosine_schedule_decays_to_zero_at_the_planned_end() -> None:
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.loop import set_lr

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rc = RetrieverConfig(lr=0.01)
    assert set_lr(opt, rc, 0.0) == pytest.approx(0.01) and set_lr(opt, rc, 0.5) == pytest.approx(0.005)
    assert set_lr(opt, rc, 1.0) == pytest.approx(0.0) and opt.param_groups[0]["lr"] == pytest.approx(0.0)
    assert set_lr(opt, rc.model_copy(update={"lr_schedule": "constant"}), 0.9) == pytest.approx(0.01)


@pytest.mark.slow  # trains the retriever on Ray Train (module fixture, ~1 min)
def test_a_rerun_with_more_epochs_resumes_from_the_last_checkpoint(trained) -> None:
    """Same storage path and run name, 10 more epochs: Ray Train restores the last checkpoint
    (model, optimizer, early-stopping state) and goes on from its epoch. Last in this file:
    it republishes the module's retriever."""
    from rayrec.seqrec.trainer import run_retriever_training

    cfg, first = trained
    done = first["last"]["epoch"]  # 60, or earlier if validation stopped improving
    assert first["last"]["start_epoch"] == 0 and done % 10 == 0
    more = run_retriever_training(cfg.model_copy(update={
        "retriever": cfg.retriever.model_copy(update={"max_epochs": done + 10})}))
    assert more["last"]["start_epoch"] == done and more["last"]["epoch"] == done + 10
    assert more["valid_ndcg@10"] >= first["valid_ndcg@10"] - 1e-9  # the best is kept across runs


def test_a_changed_setting_is_a_run_of_its_own() -> None:
    """The Ray Train run name carries a fingerprint of the model-shaping settings: a new seed or
    text_init never resumes another run's checkpoint; more epochs (how long) do."""
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.trainer import run_name

    base = RetrieverConfig()
    name = run_name(base, 100, 50)
    assert name.startswith("retriever-") and name == run_name(RetrieverConfig(), 100, 50)
    assert run_name(base.model_copy(update={"max_epochs": 500, "num_workers": 4}), 100, 50) == name
    for changed in ({"seed": 1}, {"text_init": True}, {"dim": 32}, {"dropout": 0.1}):
        assert run_name(base.model_copy(update=changed), 100, 50) != name
    assert run_name(base, 101, 50) != name and run_name(base, 100, 51) != name  # other data


def test_text_grounded_item_vectors_are_computed_once_while_nothing_changes() -> None:
    """Scoring and serving read every item's vector per request: in eval mode without
    gradients they are cached, and recomputed when a weight or the new-item vectors change."""
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.model import SASRec

    cfg = RetrieverConfig(dim=8, layers=1, max_len=5, text_init=True)
    text = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32)
    model = SASRec(6, cfg, text_vectors=text, trained=np.array([True] * 5 + [False])).eval()
    with torch.no_grad():
        a = model.item_vectors()
        assert model.item_vectors() is a  # reused
        model.text_proj.weight.mul_(2.0)  # in place, as load_state_dict does
        b = model.item_vectors()
        assert b is not a and not torch.allclose(a, b)
        model.set_new_item_vectors(np.ones((6, 8), np.float32))
        c = model.item_vectors()
        assert torch.allclose(c[5], torch.ones(8)) and torch.allclose(c[:5], b[:5])
    model.train()
    assert model.item_vectors() is not c  # training: computed every call (dropout, gradients)
