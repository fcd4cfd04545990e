"""BanditStateActor: shared serving state that survives a restart."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from rayrec.explore.config import ExploreConfig
from rayrec.explore.state import BanditState, BanditStateActor, get_or_create_state_actor


def test_actor_persists_and_restores_state(ray_cluster, tmp_path):
    cfg = ExploreConfig(persist_every=3, feedback_window_s=3600)
    path = str(tmp_path / "state" / "bandit.pkl")
    feats = np.random.default_rng(0).normal(size=(6, 4))
    actor = get_or_create_state_actor("linucb", cfg, path, seed=1, namespace="test_explore_state")
    same = get_or_create_state_actor("linucb", cfg, path, seed=1, namespace="test_explore_state")
    assert actor._actor_id == same._actor_id  # replicas share one actor
    arms = np.arange(100, 106)
    for t in range(5):
        slate = ray.get(actor.select.remote(np.zeros(6), 2, feats, arms, None, f"r{t}"))
        assert len(slate.indices) == 2 and np.all(slate.propensities == 1.0)
        shown = int(arms[slate.indices[0]])
        assert ray.get(actor.record_feedback.remote(f"r{t}", shown, 1.0)) == "recorded"
        # A replay (even with a huge reward) is acknowledged and ignored: one reward per item.
        assert ray.get(actor.record_feedback.remote(f"r{t}", shown, 1e6)) == "duplicate"
        assert not ray.get(actor.record_feedback.remote(f"r{t}", 999, 1.0))  # not shown
        assert ray.get(actor.finalize.remote(f"r{t}"))
    pending = ray.get(actor.select.remote(np.zeros(6), 2, feats, arms, None, "open"))
    assert pending is not None
    stats = ray.get(actor.stats.remote())
    assert stats["total_updates"] == 5 and stats["pending"] == 1
    before = ray.get(actor.state_dict.remote())
    assert ray.get(actor.close.remote()) == path  # finalizes "open" (reward 0) and persists
    ray.kill(actor)

    restored = BanditStateActor.options(namespace="test_explore_state").remote("linucb", cfg, path, 7)
    stats = ray.get(restored.stats.remote())
    assert stats["restored"] and stats["total_updates"] == 6
    after = ray.get(restored.state_dict.remote())
    assert np.allclose(after["n"][100:106].sum(), before["n"][100:106].sum() + 2)
    assert not np.allclose(after["A_inv"], np.eye(4))
    ray.kill(restored)


def test_periodic_persist_and_expiry(tmp_path):
    cfg = ExploreConfig(persist_every=2, feedback_window_s=1e-6)
    path = str(tmp_path / "s.pkl")
    state = BanditState("thompson_beta", cfg, path)
    state.select(np.zeros(4), 2, request_id="a")
    state.select(np.zeros(4), 2, request_id="b")  # "a" expired: learned with reward 0
    state.select(np.zeros(4), 2, request_id="c")  # "b" expired -> 2 updates -> persisted
    assert state.total_updates == 2
    assert BanditState("thompson_beta", cfg, path).total_updates == 2
    with pytest.raises(ValueError, match="state is for policy"):
        BanditState("ucb1", cfg, path)
