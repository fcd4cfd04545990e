"""Serving pieces that need no Ray: the event log writer/reader, API keys, body limit, build_app args."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml
from rayrec.data.schema import FEEDBACK_COLUMNS, IMPRESSION_COLUMNS
from rayrec.serving.api import BodySizeLimit, key_is_valid, load_api_keys
from rayrec.serving.eventlog import EventLogFull, EventLogWriter, read_events, read_report


def _imp(rid: str, pos: int) -> dict:
    return {"request_id": rid, "timestamp": time.time(), "user_id": "u1", "user_idx": 1,
            "policy": "greedy", "position": pos, "item_idx": 10 + pos, "item_id": str(10 + pos),
            "score": 0.5, "propensity": 1.0, "n_candidates": 20, "degraded": False}


def test_event_log_flushes_by_rows_and_on_close(tmp_path):
    w = EventLogWriter(str(tmp_path), flush_rows=3, flush_interval_s=60.0)
    w.log_impressions([_imp("a", 0), _imp("a", 1)])
    time.sleep(0.2)
    assert read_events(str(tmp_path))[0].empty, "below flush_rows nothing is written yet"
    w.log_impressions([_imp("a", 2)])
    deadline = time.time() + 5
    while time.time() < deadline and len(read_events(str(tmp_path))[0]) < 3:
        time.sleep(0.05)
    assert len(read_events(str(tmp_path))[0]) == 3, "reaching flush_rows wakes the writer"
    w.log_feedback([{"request_id": "a", "timestamp": time.time(), "item_idx": 11, "item_id": "11",
                     "reward": 1.0}])
    w.close()
    imps, fb = read_events(str(tmp_path))
    assert tuple(imps.columns) == (*IMPRESSION_COLUMNS, "source") and tuple(fb.columns) == (*FEEDBACK_COLUMNS, "source")
    assert imps["position"].tolist() == [0, 1, 2] and fb["reward"].tolist() == [1.0]
    assert str(imps["user_idx"].dtype) == "int64" and str(imps["degraded"].dtype) == "bool"
    assert not list((tmp_path / "impressions").glob(".tmp-*")), "no temp files left behind"
    with pytest.raises(RuntimeError, match="closed"):
        w.log_impressions([_imp("b", 0)])


def test_event_log_interval_flush_and_bad_rows(tmp_path):
    w = EventLogWriter(str(tmp_path), flush_rows=1000, flush_interval_s=0.2)
    w.log_impressions([_imp("x", 0)])
    deadline = time.time() + 5
    while time.time() < deadline and read_events(str(tmp_path))[0].empty:
        time.sleep(0.05)
    assert len(read_events(str(tmp_path))[0]) == 1, "the interval flush writes small batches"
    bad = _imp("y", 0)
    del bad["propensity"]
    with pytest.raises(ValueError, match="missing columns \\['propensity'\\]"):
        w.log_impressions([bad])
    w.close()


def _fb(rid: str, item: int) -> dict:
    return {"request_id": rid, "timestamp": time.time(), "item_idx": item, "item_id": str(item), "reward": 1.0}


def test_event_log_storage_failure_loses_nothing_and_bounds_memory(tmp_path, monkeypatch):
    """Storage fails on the impressions write: the feedback rows (not yet written) go back
    too; the buffer stops at max_buffered_rows with EventLogFull (the endpoint's 503); after
    recovery every acknowledged row is on disk, once."""
    w = EventLogWriter(str(tmp_path), flush_rows=1000, flush_interval_s=60.0, background=False,
                       max_buffered_rows=6)
    w.log_impressions([_imp("a", 0), _imp("a", 1)])
    w.log_feedback([_fb("a", 10), _fb("a", 11)])
    real = w._write_part
    monkeypatch.setattr(w, "_write_part", lambda kind, rows: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        w.flush()
    assert w.buffered == 4 and "disk gone" in w.last_error
    w.log_feedback([_fb("b", 12), _fb("b", 13)])
    with pytest.raises(EventLogFull, match="max_buffered_rows=6"):
        w.log_impressions([_imp("c", 0)])
    monkeypatch.setattr(w, "_write_part", real)
    assert w.flush() == 6 and w.buffered == 0 and w.last_error is None
    imps, fb = read_events(str(tmp_path))
    assert imps["position"].tolist() == [0, 1]
    assert sorted(fb["item_idx"].tolist()) == [10, 11, 12, 13]
    w.close()


def test_a_garbled_part_file_is_quarantined_and_the_rest_read(tmp_path):
    w = EventLogWriter(str(tmp_path), flush_rows=1000, flush_interval_s=60.0, background=False)
    w.log_impressions([_imp("a", 0)])
    w.flush()
    w.log_impressions([_imp("b", 0)])
    w.close()
    (tmp_path / "impressions" / "part-0-bad-000001.parquet").write_bytes(b"PAR1 not parquet")
    (tmp_path / "impressions" / "part-1-empty-000001.parquet").write_bytes(b"")
    imps, _ = read_events(str(tmp_path))
    assert sorted(imps["request_id"]) == ["a", "b"]
    assert read_report(str(tmp_path))["impressions_quarantined"] == 2
    assert read_report(str(tmp_path))["impressions_parts"] == 2
    assert len(read_events(str(tmp_path))[0]) == 2  # quarantined parts are not read again


def test_read_events_on_empty_dir_has_schema_columns(tmp_path):
    imps, fb = read_events(str(tmp_path / "nothing"))
    assert imps.empty and tuple(imps.columns) == (*IMPRESSION_COLUMNS, "source")
    assert fb.empty and tuple(fb.columns) == (*FEEDBACK_COLUMNS, "source")


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RR_KEYS", "k1, k2 ,")
    f = tmp_path / "keys"
    f.write_text("# comment\nk3\n\n")
    keys = load_api_keys("RR_KEYS", str(f))
    assert keys == ["k1", "k2", "k3"]
    assert key_is_valid("k3", keys) and not key_is_valid("k4", keys)
    assert not key_is_valid(None, keys) and not key_is_valid("", keys)


async def _echo(scope, receive, send):
    msg = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": msg["body"]})


def _call(mw: BodySizeLimit, body: bytes, declared: bool, chunk: int = 1000) -> tuple[int, bytes]:
    """Send ``body`` in chunks through the middleware; returns (status, echoed body)."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
             for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return queue.pop(0)

    async def send(msg):
        sent.append(msg)

    headers = [(b"content-length", str(len(body)).encode())] if declared else []
    asyncio.run(mw({"type": "http", "headers": headers}, receive, send))
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.parametrize("declared", [True, False])
def test_body_size_limit_declared_and_streamed(declared):
    mw = BodySizeLimit(_echo, max_bytes=2500)
    status, payload = _call(mw, b"x" * 3000, declared)
    assert status == 413 and json.loads(payload)["error"] == "request body too large"
    assert _call(mw, b"y" * 2400, declared) == (200, b"y" * 2400)


def test_build_app_rejects_unknown_args():
    from rayrec.serving.app import build_app

    with pytest.raises(ValueError, match="unknown build_app args \\['colour'\\]"):
        build_app({"colour": "red"})
    from rayrec.errors import ConfigError

    with pytest.raises(ConfigError, match="serve.max_k"):
        build_app({"serve.max_k": 0})


SERVE_CONFIGS = Path(__file__).resolve().parents[1] / "serve_configs"


def _serve_configs() -> list[tuple[str, dict]]:
    out = [(p.name, yaml.safe_load(p.read_text())) for p in sorted(SERVE_CONFIGS.glob("*.yaml"))
           if p.name != "kuberay-rayservice.yaml"]
    ray_service = SERVE_CONFIGS / "kuberay-rayservice.yaml"
    if ray_service.is_file():
        spec = yaml.safe_load(ray_service.read_text())["spec"]
        out.append((ray_service.name, yaml.safe_load(spec["serveConfigV2"])))
    return out


@pytest.mark.parametrize(("name", "raw"), _serve_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_serve_configs_validate_and_build(name, raw):
    """Every shipped serve config passes Serve's schema and builds the rayrec application."""
    from ray.serve.schema import ServeDeploySchema
    from rayrec.serving.app import build_app

    schema = ServeDeploySchema.model_validate(raw)
    for app in schema.applications:
        assert app.import_path == "rayrec.serving.app:build_app"
        built = build_app(dict(app.args))
        names = {d.name for d in (app.deployments or [])}
        assert names <= {"Ingress", "Retrieval", "Ranking"}, name
        assert type(built).__name__ == "Application"


def test_cluster_manifests_turn_ray_token_auth_on():
    """#23: whoever reaches a dashboard without token auth submits jobs (runs code): the
    KubeRay manifest has token auth on; the Serve config for a `ray start` cluster says how."""
    spec = yaml.safe_load((SERVE_CONFIGS / "kuberay-rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    assert spec["authOptions"] == {"mode": "token"}
    assert "RAY_AUTH_MODE=token" in (SERVE_CONFIGS / "gpu_cluster.yaml").read_text()


def test_binding_beyond_loopback_requires_api_keys():
    from rayrec.errors import UserFacingError
    from rayrec.serving.config import ServeConfig
    from rayrec.serving.control import check_exposure

    check_exposure(ServeConfig())  # 127.0.0.1, keys off: fine
    check_exposure(ServeConfig(host="0.0.0.0", require_api_key=True))
    with pytest.raises(UserFacingError, match="serve.require_api_key=true"):
        check_exposure(ServeConfig(host="0.0.0.0"))
    with pytest.raises(ValueError, match="reward_min"):
        ServeConfig(reward_min=2.0, reward_max=1.0)


def test_app_resources_count_every_replica_the_app_starts():
    """What `rayrec serve` checks against the cluster before deploying (fail fast, not wait)."""
    from rayrec.config import load_config
    from rayrec.serving.app import app_resources

    base = {"serve.ranking.num_cpus": 1, "serve.ranking.autoscaling.min_replicas": 0,
            "serve.retrieval_replicas": 2, "serve.retrieval_num_cpus": 0.5, "serve.ingress_num_cpus": 0.25}
    assert app_resources(load_config(None, base)) == {"CPU": 2.25, "GPU": 0.0}  # ranking starts 1
    on = base | {"serve.generation.enabled": True, "serve.generation.replicas": 2,
                 "serve.generation.num_cpus": 1, "serve.generation.num_gpus": 0.5, "serve.ranking.num_gpus": 1}
    assert app_resources(load_config(None, on)) == {"CPU": 4.25, "GPU": 2.0}


def test_ingress_waits_on_retrieval_within_its_timeout():
    """#23: every deployment call the ingress awaits is timed: a retrieval that never answers
    is a 503 + Retry-After naming the setting, and the call is cancelled."""
    from types import SimpleNamespace

    from fastapi import HTTPException
    from rayrec.config import load_config
    from rayrec.serving.ingress import RecommenderIngress

    class Stuck:  # a DeploymentResponse that never resolves
        cancelled = False

        def __await__(self):
            return asyncio.get_event_loop().create_future().__await__()

        def cancel(self):
            Stuck.cancelled = True

    cfg = load_config(None, {"serve.retrieval_timeout_s": 0.2})
    call = RecommenderIngress.func_or_class._retrieval_call
    t0 = time.perf_counter()
    with pytest.raises(HTTPException) as err:
        asyncio.run(call(SimpleNamespace(cfg=cfg), Stuck()))
    assert err.value.status_code == 503 and err.value.headers == {"Retry-After": "2"}
    assert "serve.retrieval_timeout_s=0.2" in err.value.detail and Stuck.cancelled
    assert time.perf_counter() - t0 < 5


def test_a_transient_storage_error_is_retried_and_never_quarantines(tmp_path, monkeypatch):
    """#23: a read that storage fails (an S3 timeout) is retried; a part it cannot deliver
    after the retries stays where it is and the read fails loudly, never quarantining data."""
    import pyarrow.fs as pafs
    from rayrec.serving import eventlog

    w = EventLogWriter(str(tmp_path), flush_rows=1000, flush_interval_s=60.0, background=False)
    w.log_impressions([_imp("a", 0)])
    w.close()
    real, failures = pafs.LocalFileSystem.open_input_stream, {"left": 2}

    class Flaky(pafs.LocalFileSystem):
        def open_input_stream(self, path, *args, **kwargs):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError("When reading: curlCode 28, Timeout was reached")
            return real(self, path, *args, **kwargs)

    monkeypatch.setattr(eventlog, "READ_BACKOFF_S", 0.01)
    monkeypatch.setattr(eventlog, "resolve_fs", lambda root: (Flaky(), str(root)))
    assert eventlog.read_events(str(tmp_path))[0]["request_id"].tolist() == ["a"]  # two failures: retried
    failures["left"] = 100
    with pytest.raises(OSError, match="left in place"):
        eventlog.read_events(str(tmp_path))
    monkeypatch.undo()
    assert read_report(str(tmp_path))["impressions_quarantined"] == 0
    assert read_events(str(tmp_path))[0]["request_id"].tolist() == ["a"]


def test_key_quota_is_a_token_bucket_per_key():
    from rayrec.ratelimit import TokenBuckets
    from rayrec.serving.api import key_id

    now = [0.0]
    q = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [q.take("a") for _ in range(3)] == [None] * 3  # the burst
    assert q.take("a") == pytest.approx(0.5)  # next token in 1/rate s; nothing spent
    assert q.take("b") is None  # another key has its own bucket
    now[0] += 0.5
    assert q.take("a") is None and q.take("a") == pytest.approx(0.5)
    now[0] += 100
    assert [q.take("a") for _ in range(4)][-1] is not None  # refills to the burst, no more
    assert key_id("secret-key").startswith("key-") and "secret" not in key_id("secret-key")


def test_no_secret_reaches_a_serve_app_config(monkeypatch):
    """#23: a Serve app config is shown by the dashboard: the job's secret env vars stay out."""
    import ray
    from rayrec.serving import app

    env = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "RAY_AUTH_TOKEN": "t",
           "RAYREC_API_KEYS": "k1", "DB_PASSWORD": "p", "AWS_ENDPOINT_URL": "http://minio:9000",
           "HF_HUB_OFFLINE": "1"}

    class Ctx:
        runtime_env = {"working_dir": "gcs://wd.zip", "env_vars": env}

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Ctx())
    shipped = app._shipped_code()
    assert shipped == {"working_dir": "gcs://wd.zip",
                       "env_vars": {"AWS_ENDPOINT_URL": "http://minio:9000", "HF_HUB_OFFLINE": "1"}}
    allowed = app._shipped_code(["AWS_SECRET_ACCESS_KEY"])["env_vars"]  # an operator's explicit choice
    assert allowed["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and "RAY_AUTH_TOKEN" not in allowed


def test_the_main_job_never_replaces_an_app_it_did_not_start(monkeypatch):
    """#23: on a shared cluster the simulated traffic refuses an app name that is taken."""
    from types import SimpleNamespace

    from ray import serve
    from rayrec.errors import UserFacingError
    from rayrec.recipes.traffic import refuse_a_running_app

    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications={"rayrec_simulation": {}}))
    with pytest.raises(UserFacingError, match="already running on this cluster"):
        refuse_a_running_app("rayrec_simulation")
    refuse_a_running_app("other_simulation")  # free: goes on


def test_a_feedback_retried_after_its_row_failed_is_written_exactly_once(tmp_path):
    """#23: the policy learned the reward, then the event log refused the row (503). The retry
    is acknowledged as a duplicate (never learned twice) and its row is written then; the log
    reads it once even if a second replica writes it again."""
    from collections import OrderedDict
    from types import SimpleNamespace

    from rayrec.config import load_config
    from rayrec.serving.api import FeedbackRequest
    from rayrec.serving.ingress import RecommenderIngress

    writer = EventLogWriter(str(tmp_path), flush_rows=1000, flush_interval_s=60.0, background=False)
    refuse = {"next": True}
    log_feedback = writer.log_feedback

    def flaky_log(rows):
        if refuse.pop("next", False):
            raise EventLogFull("event log storage unavailable")
        log_feedback(rows)

    learned = []

    class Bandit:
        async def feedback(self, policy, request_id, arm, reward, source=None):
            learned.append(arm)
            return "recorded" if len(learned) == 1 else "duplicate"

    def replica():
        return SimpleNamespace(
            cfg=load_config(None, {}), events=SimpleNamespace(check_capacity=lambda: None, log_feedback=flaky_log),
            bandit=Bandit(), _feedback_logged=OrderedDict(), _source=lambda request: None,
            _slates={"r1": {"policy": "greedy", "item_idx": [7], "pos_of": {"i7": 0}, "learned": True,
                            "rewarded": set()}})

    feedback = RecommenderIngress.func_or_class.feedback
    req = FeedbackRequest(request_id="r1", item_id="i7", reward=1.0)
    first = replica()
    with pytest.raises(EventLogFull):  # answered 503 + Retry-After
        asyncio.run(feedback(first, req, None))
    again = asyncio.run(feedback(first, req, None))
    assert again.duplicate and not again.recorded
    asyncio.run(feedback(first, req, None))  # a third try: this replica wrote it already
    asyncio.run(feedback(replica(), req, None))  # another replica writes it again
    writer.close()
    _, fb = read_events(str(tmp_path))
    assert fb[["request_id", "item_id"]].values.tolist() == [["r1", "i7"]]


def test_the_feedback_loop_learns_only_attributed_traffic(tmp_path):
    """#23: rows carry the client key's id; once the log is attributed, the loop keeps slates a
    key asked for and the clicks of that key only. Parts written before the column read as null."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rayrec.recipes.feedback import attributed_only

    w = EventLogWriter(str(tmp_path), flush_rows=1000, flush_interval_s=60.0, background=False)
    w.log_impressions([_imp("a", 0) | {"source": "key-1"}, _imp("b", 0) | {"source": "key-2"}, _imp("c", 0)])
    fb = {"timestamp": time.time(), "item_idx": 10, "item_id": "10", "reward": 1.0}
    w.log_feedback([{"request_id": "a", "source": "key-1"} | fb, {"request_id": "b", "source": "key-1"} | fb,
                    {"request_id": "c"} | fb])
    w.close()
    old = pa.table({"request_id": ["z"], "timestamp": [1.0], "item_idx": [3], "item_id": ["3"], "reward": [1.0]})
    pq.write_table(old, tmp_path / "feedback" / "part-0-old-000001.parquet")  # before `source`
    imps, fbs = read_events(str(tmp_path))
    assert fbs.set_index("request_id")["source"].isna()[["c", "z"]].all()
    kept_imps, kept_fb = attributed_only(imps, fbs)
    assert sorted(kept_imps["request_id"]) == ["a", "b"]  # "c" had no key
    assert kept_fb["request_id"].tolist() == ["a"]  # key-1's click on key-2's slate is not kept
    anonymous = imps[imps["source"].isna()]
    assert attributed_only(anonymous, fbs)[1].equals(fbs)  # an endpoint without keys: all of it


def test_an_explanation_reads_only_the_history_the_request_sent():
    """#23: user_id is asserted by the client; an explanation quotes the history it reads, so by
    default it reads the request's own history, never the named user's stored one."""
    from types import SimpleNamespace

    from rayrec.config import load_config
    from rayrec.serving.ingress import RecommenderIngress

    seen = []

    class Generation:
        class explain:  # noqa: N801 (a handle's method)
            @staticmethod
            def remote(history, query, items, deadline):
                seen.append(list(history))

                async def answer():
                    return [{"item_idx": i, "status": "explained", "text": "t"} for i in items]
                return answer()

    cand = {"history": [1, 2, 3, 9], "sent_history": [9], "item_idx": [4, 5]}
    explain = RecommenderIngress.func_or_class._explain
    for stored, expected in ((False, [9]), (True, [1, 2, 3, 9])):
        cfg = load_config(None, {"serve.generation.explain_stored_history": stored})
        asyncio.run(explain(SimpleNamespace(cfg=cfg, generation=Generation()), cand, [0, 1], None))
        assert seen[-1] == expected
