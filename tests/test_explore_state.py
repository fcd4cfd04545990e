"""BanditStateActor: shared serving state that survives a restart."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from rayrec.explore.config import ExploreConfig
from rayrec.explore.policies import make_policy
from rayrec.explore.state import BanditState, BanditStateActor, get_or_create_state_actor


def test_actor_persists_and_restores_state(ray_cluster, tmp_path):
    cfg = ExploreConfig(persist_every=3, feedback_window_s=3600)
    path = str(tmp_path / "state" / "bandit.npz")
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
    assert after["head"]["n"] == before["head"]["n"] + 2  # the two items of "open", learned at close
    assert not np.allclose(after["head"]["precision"], np.diag(after["head"]["lam0"]))
    ray.kill(restored)


def test_periodic_persist_and_expiry(tmp_path):
    cfg = ExploreConfig(persist_every=2, feedback_window_s=1e-6)
    path = str(tmp_path / "s.npz")
    state = BanditState("thompson_beta", cfg, path)
    state.select(np.zeros(4), 2, request_id="a")
    state.select(np.zeros(4), 2, request_id="b")  # "a" expired: learned with reward 0
    state.select(np.zeros(4), 2, request_id="c")  # "b" expired -> 2 updates -> persisted
    assert state.total_updates == 2
    assert BanditState("thompson_beta", cfg, path).total_updates == 2
    with pytest.raises(ValueError, match="state is for policy"):
        BanditState("ucb1", cfg, path)


def test_a_planted_pickle_is_refused_never_executed(tmp_path):
    """The run directory is not trusted: a pickle where the state should be fails to load with
    a clear error and runs nothing (the marker file it would create never appears)."""
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "state.npz"
    path.write_bytes(pickle.dumps({"policy": Payload()}))
    with pytest.raises(ValueError, match="not a rayrec state file"):
        BanditState("greedy", ExploreConfig(), str(path))
    np.save(path.with_suffix(".obj.npy"), np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        BanditState("greedy", ExploreConfig(), str(path.with_suffix(".obj.npy")))
    assert not marker.exists()


def test_pending_slates_are_bounded(tmp_path):
    cfg = ExploreConfig(max_pending=50, feedback_window_s=3600)
    state = BanditState("greedy", cfg, None)
    for t in range(500):
        state.select(np.zeros(4), 2, request_id=f"r{t}")
    assert len(state.pending) == 50 and state.evicted == 450 and state.total_updates == 450


def test_serving_client_selects_on_a_local_copy_and_registers_with_the_actor(ray_cluster, tmp_path):
    """BanditClient (serve.policy_sync_s > 0): the slate comes from this process' copy of the
    learned statistics, the same choice and propensities the actor would make; the slate is
    registered with the actor off the request path and its feedback is learned there; a killed
    actor is re-created from its persisted state on the next call."""
    import asyncio
    import time

    from rayrec.config import load_config
    from rayrec.serving.bandit import ACTOR_PREFIX, NAMESPACE, BanditClient, kill_state_actors

    cfg = load_config(None, {"run_dir": str(tmp_path), "serve.policy_sync_s": 0.2,
                             "explore.feedback_window_s": 3600})
    app = "test_local_copy"
    scores, arms = np.array([0.1, 2.0, 0.5, 1.5, -1.0]), np.arange(10, 15)

    async def scenario():
        client = BanditClient(cfg, app, stream="replica-a")
        slate = await client.select("ucb1", scores, 2, None, arms, "r1")
        actor = ray.get_actor(f"{ACTOR_PREFIX}:{app}:ucb1", namespace=NAMESPACE)
        expected = make_policy("ucb1", cfg.explore).select(scores, 2, None, arms)  # fresh state, as the actor's
        assert slate.indices.tolist() == expected.indices.tolist()
        assert np.allclose(slate.propensities, expected.propensities)
        shown = int(arms[slate.indices[0]])
        assert await client.feedback("ucb1", "r1", shown, 1.0) == "recorded"  # waited for the registration
        assert await client.feedback("ucb1", "r1", shown, 1.0) == "duplicate"
        assert ray.get(actor.finalize.remote("r1"))
        await asyncio.sleep(0.3)  # older than policy_sync_s: the next select refreshes the copy
        await client.select("ucb1", scores, 2, None, arms, "r2")
        await asyncio.sleep(0.2)
        copy = client._copies["ucb1"].policy
        assert copy.n[shown] == 1 and copy.s[shown] == 1.0  # the learned reward reached the copy
        client._copies["ucb1"].synced_at -= 3600  # idle for an hour: refreshed first, not degraded
        await client.select("ucb1", scores, 2, None, arms, "r2b")
        assert time.monotonic() - client._copies["ucb1"].synced_at < 60

        await asyncio.gather(*(task for task, _ in client._registering.values()))  # r2, r2b reached it
        assert ray.get(actor.close.remote())  # persist, then kill: the client re-creates it
        ray.kill(actor)
        slate = await client.select("ucb1", scores, 2, None, arms, "r3")
        assert await client.feedback("ucb1", "r3", int(arms[slate.indices[0]]), 1.0) == "recorded"
        stats = (await client.stats())["ucb1"]
        assert stats["restored"] and stats["total_updates"] == 3, stats  # r1, r2, r2b were learned
        assert client.recreated >= 1 and stats["registration_failures"] == 0

        exact = BanditClient(cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"policy_sync_s": 0})}), app)
        slate = await exact.select("ucb1", scores, 2, None, arms, "r4")  # on the actor itself
        assert await exact.feedback("ucb1", "r4", int(arms[slate.indices[0]]), 1.0) == "recorded"

    try:
        asyncio.run(scenario())
    finally:
        kill_state_actors(app, ["ucb1"])


def test_stored_state_round_trips_as_data(tmp_path):
    """encode_state / decode_state: the head, the new items' offsets and the generator's state
    come back equal, so a restored policy selects as the saved one would."""
    from rayrec.explore.features import contextual_features
    from rayrec.explore.state import decode_state, encode_state

    rng = np.random.default_rng(0)
    feats = contextual_features(rng.normal(size=(6, 8)), rng.normal(size=8), [0, 1, 0, 1, 0, 0], dim=4)
    scores, arms, new = rng.normal(size=6), np.arange(20, 26), np.array([0, 1, 0, 1, 0, 0], bool)
    cfg = ExploreConfig(feature_dim=4)
    a = make_policy("neural_linear_ts", cfg, seed=3)
    for _ in range(10):
        s = a.select(scores, 3, feats, arms, new=new)
        a.update(arms[s.indices], rng.integers(0, 2, 3).astype(float), feats[s.indices], scores[s.indices],
                 new[s.indices])
    b = make_policy("neural_linear_ts", cfg, seed=99)
    b.load_state_dict(decode_state(encode_state(a.state_dict())))
    assert b.items.stats == a.items.stats and np.allclose(b.head.mean, a.head.mean)
    sa, sb = a.select(scores, 3, feats, arms, new=new), b.select(scores, 3, feats, arms, new=new)
    assert np.array_equal(sa.indices, sb.indices) and np.allclose(sa.propensities, sb.propensities)
    with pytest.raises(ValueError, match="state is for policy"):
        make_policy("linucb", cfg).load_state_dict(decode_state(encode_state(a.state_dict())))


def test_pending_slates_are_bounded_in_bytes():
    """#23: k = 100 slates with features cannot grow the actor past max_pending_mb."""
    cfg = ExploreConfig(max_pending=10_000, max_pending_mb=0.05, feedback_window_s=3600)
    state = BanditState("linucb", cfg, None)
    feats = np.random.default_rng(0).normal(size=(100, 16))  # 6.4 kB a slate as float32
    for t in range(200):
        state.select(np.zeros(100), 100, feats, np.arange(100), request_id=f"r{t}")
    assert state.pending_bytes <= 0.05 * 2**20 and 1 < len(state.pending) < 10
    assert state.evicted == 200 - len(state.pending) and state.stats()["pending_mb"] <= 0.05


def test_one_keyed_source_cannot_steer_the_shared_statistics():
    """#23: the zeros of slates from a key that never reports feedback on its own slates are not
    learned (a flood of requests would only demote what everyone is shown); a reporting key
    teaches at most source_updates_per_s (burst 60 s of it); anonymous traffic is unchanged."""
    cfg = ExploreConfig(feedback_window_s=3600, source_updates_per_s=0.05)  # burst: 3 slates
    state = BanditState("ucb1", cfg, None)
    arms = np.arange(10, 20)
    for t in range(200):  # the flood: requests, never a click
        state.select(np.zeros(10), 3, arms=arms, request_id=f"flood{t}", source="key-flood")
        state.finalize(f"flood{t}")
    assert state.total_updates == 0 and state.not_learned["never_reported"] == 200
    assert state.stats()["not_learned"] == {"never_reported": 200, "over_source_rate": 0}
    # a reporting client: learned, up to its rate
    for t in range(5):
        slate = state.select(np.zeros(10), 3, arms=arms, request_id=f"ok{t}", source="key-ok")
        assert state.record_feedback(f"ok{t}", int(arms[slate.indices[0]]), 1.0, source="key-ok") == "recorded"
        state.finalize(f"ok{t}")
    assert state.total_updates == 3 and state.not_learned["over_source_rate"] == 2
    # another key's feedback on the flood's slates does not vouch for the flooder
    state.select(np.zeros(10), 3, arms=arms, request_id="f", source="key-flood")
    state.record_feedback("f", int(arms[0]), 1.0, source="key-ok")
    state.finalize("f")
    assert state.total_updates == 3 and "key-flood" not in state.reporting
    for t in range(5):  # anonymous (an endpoint without keys): learned as before
        state.select(np.zeros(10), 3, arms=arms, request_id=f"a{t}")
        state.finalize(f"a{t}")
    assert state.total_updates == 8
