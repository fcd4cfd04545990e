"""The new-item protocol: no held-out item reaches any training stage's input, a held-out item
gets its vector from text alone, and the LoRA item tower trains on Ray Train + DeepSpeed and
serves new items' vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rayrec.config import load_config
from rayrec.data import schema

N_ITEMS, N_USERS = 30, 40


def write_release_dataset(data_dir: Path, seed: int = 0) -> None:
    """Item i is released at day i (no interaction before); each user clicks 12 items in time,
    each a released item. Every item's text has tags (gathered later), which release text drops."""
    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    texts = [f"Film {i} (200{i % 10}) | Genres: G{i % 3} | Tags: tag{i}" for i in range(N_ITEMS)]
    rows = []
    for u in range(N_USERS):
        times = np.sort(rng.uniform(0, N_ITEMS + 5, size=12)) * 86400
        for t in times:
            released = int(t // 86400) + 1
            rows.append((u, int(rng.integers(0, min(released, N_ITEMS))), int(t), 1.0, np.nan, "rating"))
    df = pd.DataFrame(rows, columns=list(schema.INTERACTION_COLUMNS)).astype({"label": "float32", "rating": "float32"})
    df = df.drop_duplicates(["user_idx", "item_idx"]).sort_values(["user_idx", "timestamp"])
    last = df.groupby("user_idx").tail(1).index
    before = df.drop(last).groupby("user_idx").tail(1).index
    split = pd.Series("train", index=df.index)
    split[before], split[last] = "valid", "test"
    for name in schema.SPLITS:
        d = data_dir / schema.INTERACTIONS_DIR / name
        d.mkdir(parents=True, exist_ok=True)
        df[split == name].to_parquet(d / "part-0.parquet", index=False)
    counts = df[split == "train"].groupby("item_idx").size()
    pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [str(100 + i) for i in range(N_ITEMS)],
                  "title": [t.split(" | ")[0] for t in texts], "category": ["c"] * N_ITEMS, "text": texts,
                  "popularity": [int(counts.get(i, 0)) for i in range(N_ITEMS)]}).to_parquet(
        data_dir / schema.ITEMS_FILE, index=False)
    pd.DataFrame({"user_idx": np.arange(N_USERS), "user_id": [f"u{u}" for u in range(N_USERS)],
                  "n_train": np.zeros(N_USERS, np.int64)}).to_parquet(data_dir / schema.USERS_FILE, index=False)
    (data_dir / schema.MANIFEST_FILE).write_text(json.dumps({"schema_version": schema.SCHEMA_VERSION}))


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    from rayrec.data.newitems import derive_new_item_dataset, load_held_out

    root = tmp_path_factory.mktemp("newitems")
    write_release_dataset(root / "src")
    counts = derive_new_item_dataset(str(root / "src"), str(root / "new"), fraction=0.2, min_history=2)
    return root, counts, load_held_out(str(root / "new"))


def test_the_newest_items_are_held_out_and_each_target_is_a_first_contact(protocol) -> None:
    from rayrec.data import store

    root, counts, held = protocol
    src = pd.concat([store.read_pandas(str(root / "src"), "interactions", s) for s in schema.SPLITS])
    first = src.groupby("item_idx")["timestamp"].min()
    assert len(held) == counts["held_out_items"] == round(0.2 * len(first))
    assert first[held].min() >= first.drop(held).max()  # the newest by first interaction
    test = store.read_pandas(str(root / "new"), "interactions", "test")
    assert len(test) == counts["test_users"] > 0 and test["item_idx"].isin(held).all()
    kept = pd.concat([store.read_pandas(str(root / "new"), "interactions", s) for s in ("train", "valid")])
    for u, target in test.set_index("user_idx")["timestamp"].items():
        mine = src[src["user_idx"] == u]
        assert target == mine[mine["item_idx"].isin(held)]["timestamp"].min()  # the first contact
        assert (kept[kept["user_idx"] == u]["timestamp"] < target).all()  # input: only what came before
    items = store.load_items(str(root / "new"))
    new = items[items["item_idx"].isin(held)]
    assert (new["popularity"] == 0).all() and not new["text"].str.contains("Tags:").any()
    assert new["text"].str.contains(r"\(200\d\) \| Genres: G\d$").all()  # title, year, genres at release
    assert items[~items["item_idx"].isin(held)]["text"].str.contains("Tags:").all()


def test_no_held_out_item_reaches_any_training_stage_input(protocol, ray_cluster) -> None:
    """The retriever's sequences (Ray Data), ALS's tuning and refit input, popularity, the item
    tower's pairs: none holds a held-out item. (The ranker's examples are mined from the same
    train split by the retriever's training.)"""
    from rayrec.data import store
    from rayrec.itemtower.pairs import tower_data
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.data import load_sequences, sequence_dataset
    from rayrec.seqrec.model import SASRec

    root, _, held = protocol
    new = str(root / "new")
    for split in ("train", "valid"):
        assert not store.read_pandas(new, "interactions", split)["item_idx"].isin(held).any()
    windows = sequence_dataset(new, max_len=6, stride=3).to_pandas()
    assert not np.isin(np.concatenate(windows["items"].to_numpy()), held).any()
    assert not windows["valid_item"].isin(held).any()
    valid = load_sequences(new, "valid")  # ALS tuning; its refit adds the valid targets
    assert not np.isin(np.concatenate(valid["history"].to_numpy()), held).any()
    assert not valid["target"].isin(held).any()
    test = load_sequences(new, "test")  # every evaluated user's input
    assert not np.isin(np.concatenate(test["history"].to_numpy()), held).any()
    items = store.load_items(new)
    trained = items["popularity"].to_numpy() > 0
    assert not trained[held].any()
    rc = RetrieverConfig(max_len=6, dim=8, layers=1, text_init=True)
    model = SASRec(N_ITEMS, rc, np.random.default_rng(0).normal(size=(N_ITEMS, 4)).astype(np.float32), trained)
    data = tower_data(model, new, items["text"].tolist(), trained, valid_fraction=0.2, seed=0)
    for part in (data.targets, data.train_items, data.valid_items):
        assert not np.isin(part, held).any()


def test_the_user_state_reads_the_history_text_recency_weighted() -> None:
    """text_query: q_t is the unit-norm decay-weighted mean of the text vectors read so far
    (pads weigh nothing), and U starts at 0, so the model starts as plain SASRec."""
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.data import batch_inputs
    from rayrec.seqrec.model import SASRec

    rc = RetrieverConfig(max_len=5, dim=8, layers=1, text_init=True, text_query=True, text_query_decay=0.5)
    text = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    model = SASRec(6, rc, text).eval()
    seqs = batch_inputs([[1, 2, 3], [4]], 5, model.pad)
    q = model.history_text(seqs, seqs != model.pad)
    want = 0.25 * text[1] + 0.5 * text[2] + text[3]
    np.testing.assert_allclose(q[0, -1].detach().numpy(), want / np.linalg.norm(want), rtol=1e-5)
    np.testing.assert_allclose(q[1, -1].detach().numpy(), text[4] / np.linalg.norm(text[4]), rtol=1e-5)
    plain = SASRec(6, rc.model_copy(update={"text_query": False}), text).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("text_query")})
    torch.testing.assert_close(model(seqs), plain(seqs))  # U = 0 at the start
    with torch.no_grad():
        model.text_query.weight.normal_()
    assert not torch.allclose(model(seqs), plain(seqs))


def test_an_item_without_interactions_is_read_from_its_text_alone() -> None:
    """text_init: an untrained item's vector is W x (its ID embedding is never read), and it is
    left out of the training softmax, so training never pushes a new item down."""
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.data import training_tensors
    from rayrec.seqrec.model import SASRec, sequence_loss

    rc = RetrieverConfig(max_len=6, dim=8, layers=1, text_init=True, id_dropout=0.5, id_max_norm=0.5)
    text = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    trained = np.arange(10) < 7  # items 7, 8, 9 are new
    model = SASRec(10, rc, text, trained).eval()
    with torch.no_grad():
        before = model.item_vectors()[:10].clone()
        model.item.weight[7:10] += 100.0  # whatever an untrained ID embedding holds
        after = model.item_vectors()[:10]
        torch.testing.assert_close(after[7:], model.text_proj(model.text)[7:])
        torch.testing.assert_close(after[7:], before[7:])
        ids = model.item.weight[:7].clone()
        warm_id_part = after[:7] - model.text_proj(model.text)[:7]
    assert (warm_id_part.norm(dim=1) <= 0.5 + 1e-5).all()  # the ID part is bounded
    assert (ids.norm(dim=1) > 0).all()
    inputs, targets = training_tensors([[0, 1, 2, 3], [4, 5, 6]], rc.max_len, 10)
    model.train()
    sequence_loss(model, inputs, targets, rc).backward()
    assert torch.count_nonzero(model.item.weight.grad[7:10]) == 0  # never in the softmax, never read


@pytest.mark.slow  # Ray Train + DeepSpeed on a tiny encoder (~30 s)
def test_the_lora_item_tower_trains_and_serves_new_items_vectors(protocol, ray_cluster, tmp_path) -> None:
    from rayrec.data import store
    from rayrec.itemtower.trainer import run_tower_training
    from rayrec.itemtower.vectors import NewItemEncoder, text_grounded_retriever
    from rayrec.models.tiny import make_tiny_backbone
    from rayrec.retrieval.index import ItemIndex
    from rayrec.seqrec.model import SASRec, save_retriever

    root, _, held = protocol
    backbone = make_tiny_backbone("bert", tmp_path / "tiny-bert")
    cfg = load_config(overrides={
        "run_dir": str(tmp_path / "run"), "data.out": str(root / "new"),
        "retriever.max_len": 6, "retriever.dim": 8, "retriever.layers": 1, "retriever.text_init": True,
        "tower.backbone": backbone, "tower.batch_size": 4, "tower.max_steps": 2, "tower.eval_every_steps": 1,
        "tower.lora.r": 2, "train.torch_threads": 1, "train.deepspeed.zero_stage": 2,
    })
    items = store.load_items(cfg.data_dir)
    trained = items["popularity"].to_numpy() > 0
    text = np.random.default_rng(0).normal(size=(N_ITEMS, 32)).astype(np.float32)  # tiny bert: 32 dims
    save_retriever(cfg.retriever_model_dir, SASRec(N_ITEMS, cfg.retriever, text, trained), cfg.retriever)
    out = run_tower_training(cfg)
    assert out["best_step"] in (1, 2) and np.isfinite(out["valid_ndcg@10"])
    # served only where it adds: published iff it beats the frozen tower on validation
    published = out["valid_ndcg@10"] > out["start_valid_ndcg@10"]
    assert (NewItemEncoder(cfg).kind == "tuned") == published
    if not published:  # this tiny run: publish a tuned tower by hand to test the serving path
        from rayrec.itemtower.model import build_tower, save_tower, trainable_state
        from rayrec.itemtower.vectors import build_text_grounded_index, tower_model_dir

        tower, _ = build_tower(cfg.tower, 8, seed=1)
        save_tower(tower_model_dir(cfg), trainable_state(tower), cfg.tower, 8)
        build_text_grounded_index(cfg)
    enc = NewItemEncoder(cfg)
    assert enc.kind == "tuned"
    vectors = enc.encode(items["text"].tolist())
    assert vectors.shape == (N_ITEMS, 8) and np.isfinite(vectors).all()
    retriever = text_grounded_retriever(cfg)  # new items from the tower, warm ones as trained
    served = retriever.item_vectors()
    np.testing.assert_allclose(served[held], vectors[held], atol=1e-5)
    frozen = text_grounded_retriever(cfg, "frozen").item_vectors()
    np.testing.assert_allclose(served[trained], frozen[trained], atol=1e-6)
    index = ItemIndex.load(cfg.retriever_index_dir)  # what the endpoint searches
    np.testing.assert_allclose(index.embeddings_for([int(held[0])])[0], vectors[held[0]], atol=1e-5)


def test_the_synthetic_world_releases_items_during_the_log() -> None:
    """data.synthetic.release_fraction: late items have no impression before their release, and
    are shown (and clicked) after it."""
    from rayrec.data.config import SyntheticWorldConfig
    from rayrec.data.synthetic import T0, generate_chunk, release_times
    from rayrec.data.world import SyntheticWorld

    cfg = SyntheticWorldConfig(n_users=60, n_items=80, n_events=6000, release_fraction=0.25,
                               malformed_fraction=0.0, days=60)
    world = SyntheticWorld.generate(cfg)
    table = generate_chunk(world, cfg, 0, np.arange(cfg.n_users), cfg.n_events).to_pandas()
    release = release_times(cfg.n_items, cfg)
    late = np.flatnonzero(release > T0)
    assert len(late) == 20 and release[late].min() >= T0 + 0.5 * 60 * 86400
    item, ts = table["item_id"].astype(int).to_numpy(), table["timestamp"].astype(int).to_numpy()
    assert (ts >= release[item]).all()
    shown_late = table[np.isin(item, late)]
    assert len(shown_late) > 0 and (shown_late["event"] == "click").any()
