"""The synthetic world's text and sequential habits carry the signal they promise (no Ray)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from rayrec.data.config import DataConfig, SyntheticWorldConfig
from rayrec.data.synthetic import CATALOG_FILE, catalog_table, generate_chunk, synthetic_data_config
from rayrec.data.world import MOOD, N_AXES, VOCABULARY, SyntheticWorld


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(SyntheticWorldConfig())


@pytest.fixture(scope="module")
def clicks(world) -> pd.DataFrame:
    """The default world's clicks (malformed rows off), sorted by user, then time."""
    cfg = SyntheticWorldConfig(malformed_fraction=0.0)
    log = generate_chunk(world, cfg, 0, np.arange(cfg.n_users), cfg.n_events).to_pandas()
    log = log.astype({"user_id": int, "item_id": int, "timestamp": np.int64})
    return log[log.event == "click"].sort_values(["user_id", "timestamp"], kind="stable")


def _bag_of_words(texts: list[str]) -> np.ndarray:
    tokens = [re.findall(r"[a-z][a-z\-]*", t.lower()) for t in texts]
    vocab = {w: j for j, w in enumerate(sorted({w for ts in tokens for w in ts}))}
    x = np.zeros((len(texts), len(vocab)))
    for i, ts in enumerate(tokens):
        for w in ts:
            x[i, vocab[w]] += 1
    return x


def _ridge_r2(x: np.ndarray, y: np.ndarray, n_train: int, lam: float = 5.0) -> float:
    """Held-out R^2 (all output dimensions pooled) of a ridge regression x -> y."""
    xt, yt, xv, yv = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    mx, my = xt.mean(0), yt.mean(0)
    beta = np.linalg.solve((xt - mx).T @ (xt - mx) + lam * np.eye(x.shape[1]), (xt - mx).T @ (yt - my))
    pred = (xv - mx) @ beta + my
    return float(1 - ((yv - pred) ** 2).sum() / ((yv - yv.mean(0)) ** 2).sum())


def test_item_text_predicts_latent_factors(world):
    y = world.item_factors.astype(np.float64)
    full = _bag_of_words([world.item_text(i) for i in range(world.n_items)])
    desc = _bag_of_words(world.descriptions)
    shuffled = full[np.random.default_rng(0).permutation(world.n_items)]
    r2_full, r2_desc, r2_shuffled = (_ridge_r2(x, y, 400) for x in (full, desc, shuffled))
    assert r2_full > 0.6 and r2_desc > 0.3, (r2_full, r2_desc)  # not just the genre name
    assert r2_shuffled < 0.05, r2_shuffled
    # modest length: the ranker reads several item texts within a 96-token budget
    assert max(len(world.item_text(i).split()) for i in range(world.n_items)) < 40


def test_noise_free_text_names_the_strongest_axis():
    w = SyntheticWorld.generate(SyntheticWorldConfig(text_noise=0.0, misleading_fraction=0.2))
    proj = w.item_factors @ w.text_axes
    r1 = np.argmax(np.abs(proj), axis=1)
    pole = 2 * r1 + (proj[np.arange(w.n_items), r1] < 0)
    # the first word of every description is a mood of the strongest pole, unless misleading
    said = np.array([any(d.lower().startswith(m.lower()) or d.startswith(f"A {m}")
                         for m in VOCABULARY[p][MOOD]) for d, p in zip(w.descriptions, pole, strict=True)])
    assert said[~w.item_misleading].all()
    assert said[w.item_misleading].mean() < 0.3
    assert len(VOCABULARY) == 2 * N_AXES


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25])
def test_misleading_fraction_is_respected(fraction):
    w = SyntheticWorld.generate(SyntheticWorldConfig(n_users=20, n_items=200, misleading_fraction=fraction))
    assert w.item_misleading.sum() == round(fraction * 200)


def test_series_structure(world):
    in_series = world.item_series >= 0
    assert abs(in_series.mean() - 0.3) < 0.02
    for s in np.unique(world.item_series[in_series]):
        members = np.flatnonzero(world.item_series == s)
        parts = world.item_part[members]
        assert 2 <= len(members) <= 5 and sorted(parts) == list(range(1, len(members) + 1))
        first = members[parts == 1][0]
        for i in members[parts > 1]:
            assert world.titles[i] == f"{world.titles[first]} {world.item_part[i]}"
            assert world.item_category[i] == world.item_category[first]
            assert world.next_part[members[parts == world.item_part[i] - 1][0]] == i
    assert (world.next_part[~in_series] == -1).all()
    # parts are numbered by falling popularity and sit closer together than their category does
    within, category_wide = [], []
    for s in np.unique(world.item_series[in_series]):
        members = np.flatnonzero(world.item_series == s)
        members = members[np.argsort(world.item_part[members])]
        assert (np.diff(world.item_bias[members]) <= 0).all()
        f = world.item_factors[members]
        within.append((f @ f.T)[np.triu_indices(len(members), 1)].mean())
        same_cat = world.item_factors[world.item_category == world.item_category[members[0]]]
        category_wide.append((same_cat @ same_cat.T).mean())
    assert np.mean(within) > np.mean(category_wide) + 0.05


def test_text_and_series_leave_the_click_model_alone(world):
    """Same seed, same tastes and popularity, whatever the text and series knobs say."""
    other = SyntheticWorld.generate(SyntheticWorldConfig(series_fraction=0.0, text_noise=0.5,
                                                         misleading_fraction=0.3, sequential_strength=0.1))
    for name in ("user_factors", "item_factors", "item_bias", "item_category"):
        np.testing.assert_array_equal(getattr(other, name), getattr(world, name))
    assert other.descriptions != world.descriptions and (other.item_series == -1).all()


def test_series_parts_are_consumed_in_order(world, clicks):
    u, i = clicks.user_id.to_numpy(), clicks.item_id.to_numpy()
    same_user = u[1:] == u[:-1]
    after_part = same_user & (world.next_part[i[:-1]] >= 0)
    follows = np.mean(i[1:][after_part] == world.next_part[i[:-1]][after_part])
    assert after_part.sum() > 200 and follows > 0.2  # chance is ~1 / n_items
    # a user who clicks parts k and k+1 of a series mostly clicks k first
    first_click = clicks.groupby(["user_id", "item_id"]).timestamp.min()
    nxt = world.next_part
    pairs = [(t, first_click.get((uu, nxt[it]))) for (uu, it), t in first_click.items() if nxt[it] >= 0]
    ordered = np.array([a < b for a, b in pairs if b is not None])
    assert len(ordered) > 100 and ordered.mean() > 0.8


def test_consecutive_clicks_are_close_in_latent_space(world, clicks):
    u, i = clicks.user_id.to_numpy(), clicks.item_id.to_numpy()
    same_user = u[1:] == u[:-1]
    f = world.item_factors
    consecutive = np.sum(f[i[1:]] * f[i[:-1]], axis=1)[same_user].mean()
    # the same users' clicks in a random order: what taste alone (matrix factorization) explains
    rng = np.random.default_rng(0)
    shuffled = clicks.groupby("user_id").item_id.transform(lambda s: rng.permutation(s.to_numpy())).to_numpy()
    within_user = np.sum(f[shuffled[1:]] * f[shuffled[:-1]], axis=1)[same_user].mean()
    assert consecutive > within_user + 0.05, (consecutive, within_user)
    # without sequential habits the order carries nothing beyond taste
    cfg = SyntheticWorldConfig(sequential_strength=0.0, series_follow=0.0, malformed_fraction=0.0)
    flat = SyntheticWorld.generate(cfg)
    log = generate_chunk(flat, cfg, 0, np.arange(cfg.n_users), cfg.n_events).to_pandas()
    log = log[log.event == "click"]
    u2, i2 = log.user_id.astype(int).to_numpy(), log.item_id.astype(int).to_numpy()
    same2 = u2[1:] == u2[:-1]
    plain = np.sum(flat.item_factors[i2[1:]] * flat.item_factors[i2[:-1]], axis=1)[same2].mean()
    assert plain < consecutive - 0.1, (plain, consecutive)


def test_timestamps_follow_the_chain_and_sessions_do_not_overlap(world):
    cfg = SyntheticWorldConfig(malformed_fraction=0.0, session_length=5)
    log = generate_chunk(world, cfg, 3, np.arange(200), 8000).to_pandas()
    u, ts = log.user_id.astype(int).to_numpy(), log.timestamp.astype(np.int64).to_numpy()
    same_user = u[1:] == u[:-1]
    assert (np.diff(ts)[same_user] > 0).all()  # rows are in time order within each user


def test_next_item_probability_matches_simulation():
    """The closed form against the chain run many times for one user in one long session."""
    cfg = SyntheticWorldConfig(n_users=3, n_items=30, latent_dim=4, n_categories=3, series_fraction=0.5)
    w = SyntheticWorld.generate(cfg)
    n_copies, length = 30_000, 40
    users, counts = np.zeros(n_copies, dtype=np.int64), np.full(n_copies, length)
    session_start = np.tile(np.r_[True, np.zeros(length - 1, dtype=bool)], n_copies)
    item, clicked = w.simulate(users, counts, session_start, np.random.default_rng(1))
    item, clicked = item.reshape(n_copies, length), clicked.reshape(n_copies, length)
    has2 = clicked.sum(1) >= 2
    order = np.argsort(~clicked, axis=1, kind="stable")  # clicked positions first, in time order
    first = item[np.arange(n_copies), order[:, 0]]
    second = item[np.arange(n_copies), order[:, 1]]

    def total_variation(samples: np.ndarray, predicted: np.ndarray) -> float:
        return 0.5 * np.abs(np.bincount(samples, minlength=w.n_items) / len(samples) - predicted).sum()

    assert total_variation(first[clicked.any(1)], w.next_item_probability(0)) < 0.03
    # after the most frequent first click that starts a series: anchor and continuation both matter
    starts = [a for a in np.argsort(-np.bincount(first, minlength=w.n_items)) if w.next_part[a] >= 0]
    a = starts[0]
    after_a = second[has2 & (first == a)]
    assert len(after_a) > 1000
    truth = w.next_item_probability(0, a)
    assert total_variation(after_a, truth) < 0.06
    assert total_variation(after_a, w.next_item_probability(0)) > 0.2  # the static part is not enough
    assert truth[w.next_part[a]] == truth.max()


def test_save_load_round_trip(world, tmp_path):
    world.save(tmp_path)
    back = SyntheticWorld.load(tmp_path)
    for name in ("user_factors", "item_factors", "item_bias", "item_category", "item_series",
                 "item_part", "item_misleading", "text_axes", "next_part"):
        np.testing.assert_array_equal(getattr(back, name), getattr(world, name), err_msg=name)
    assert back.titles == world.titles and back.descriptions == world.descriptions
    assert (back.sequential_strength, back.series_follow) == (world.sequential_strength, world.series_follow)
    assert back.item_text(7) == world.item_text(7)
    np.testing.assert_allclose(back.next_item_probability(3, 11), world.next_item_probability(3, 11))


def test_worlds_without_text_or_habits_still_work(world, tmp_path):
    """A fitted world passes only the original fields; files saved before this change load."""
    plain = SyntheticWorld(user_factors=world.user_factors, item_factors=world.item_factors,
                           item_bias=world.item_bias, item_category=world.item_category,
                           category_names=world.category_names, titles=world.titles)
    assert plain.item_text(0) == f"{world.titles[0]} | Genres: {world.category_names[world.item_category[0]]}"
    p = plain.user_probabilities(5)
    expected = plain.impression_probability(5) * p
    np.testing.assert_allclose(plain.next_item_probability(5, 9), expected / expected.sum())
    np.savez(tmp_path / "world.npz", user_factors=world.user_factors, item_factors=world.item_factors,
             item_bias=world.item_bias, item_category=world.item_category)
    (tmp_path / "world.json").write_text(json.dumps(
        {"category_names": world.category_names, "titles": world.titles, "scale": 2.0, "offset": -3.0}))
    old = SyntheticWorld.load(tmp_path)
    assert old.sequential_strength == 0.0 and (old.item_series == -1).all()
    np.testing.assert_allclose(old.click_probability(2, 4), world.click_probability(2, 4))


def test_catalog_text_is_the_world_item_text(world, tmp_path):
    """What preprocessing writes to items.parquet ``text`` is exactly ``world.item_text``."""
    from rayrec.data.sources import load_catalog

    pq.write_table(catalog_table(world), tmp_path / CATALOG_FILE)
    catalog = load_catalog(synthetic_data_config(DataConfig(), str(tmp_path)))
    assert catalog["text"].to_pylist() == [world.item_text(i) for i in range(world.n_items)]
