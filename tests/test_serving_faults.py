"""The fault suite: the endpoint started as a user starts it (`rayrec serve`, attached to the
session Ray cluster), driven over HTTP while its parts fail.

Every 200 the endpoint sends is an acknowledgement: its impressions (and every recorded
feedback) must be on disk at the end, after a policy actor is killed, a ranking replica is
killed under load, the event log's storage fails and recovers, a garbled part file appears,
a schema fuzzer has its go, and the process is stopped with SIGTERM during traffic. The
figures (requests sent, failed, degraded; events acknowledged vs on disk) are printed at the
end of the module (``pytest tests/test_serving_faults.py -s``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from rayrec.runtime import free_port  # noqa: E402
from serving_support import make_serving_env, rayrec_serve, vid, wait_ranker  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.faults]

APP = "rayrec_faults_test"
PREFIX = "/faults"
FIGURES: dict[str, dict] = {}  # per fault: what was sent and what came back


class Ledger:
    """What the endpoint acknowledged: slates served (200) and feedback it recorded."""

    def __init__(self) -> None:
        self.slates: dict[str, int] = {}  # request_id -> items shown
        self.feedback: set[tuple[str, str]] = set()
        self.statuses: Counter = Counter()
        self._lock = threading.Lock()

    def recommend(self, client: httpx.Client, url: str, body: dict, tag: str) -> httpx.Response | None:
        """One /recommend; counts it under ``tag`` as ok / degraded / <status> / connection."""
        try:
            r = client.post(f"{url}/recommend", json=body)
        except httpx.HTTPError:
            with self._lock:
                self.statuses[(tag, "connection")] += 1
            return None
        with self._lock:
            if r.status_code == 200:
                out = r.json()
                self.slates[out["request_id"]] = len(out["items"])
                self.statuses[(tag, "degraded" if out["degraded"] else "ok")] += 1
            else:
                self.statuses[(tag, str(r.status_code))] += 1
        return r

    def give_feedback(self, client: httpx.Client, url: str, slate: dict) -> bool:
        """A click on the slate's first item; True when the endpoint recorded it."""
        item = slate["items"][0]["item_id"]
        r = client.post(f"{url}/feedback", json={"request_id": slate["request_id"], "item_id": item, "reward": 1})
        if r.status_code == 200 and r.json()["recorded"]:
            with self._lock:
                self.feedback.add((slate["request_id"], str(item)))
            return True
        return False

    def counts(self, tag: str) -> dict[str, int]:
        with self._lock:
            return {status: n for (t, status), n in self.statuses.items() if t == tag}


def _load(ledger: Ledger, url: str, tag: str, stop: threading.Event, clients: int = 2,
          feedback_every: int = 3) -> list[threading.Thread]:
    """``clients`` threads sending /recommend (and some /feedback) until ``stop`` is set."""

    def run(c: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                r = ledger.recommend(client, url, {"user_id": f"u{(n + c) % 8}", "k": 4}, tag)
                n += 1
                if r is not None and r.status_code == 200 and n % feedback_every == 0:
                    with contextlib.suppress(httpx.HTTPError):
                        ledger.give_feedback(client, url, r.json())
                if r is None or r.status_code != 200:
                    time.sleep(0.2)  # refused, 404 or 503: the endpoint is going, gone or full

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    return threads


def _stop(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        t.join(timeout=60)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, ray_cluster):
    """`rayrec serve` in its own process, attached to the session cluster; yields its URL,
    the process, the serving env and the ledger. Flushes often, with a small buffer, so
    storage faults show within a few requests."""
    env = make_serving_env(tmp_path_factory.mktemp("faults"), **{
        "serve.event_flush_rows": 16,
        "serve.event_flush_interval_s": 0.5,
        "serve.event_max_buffered_rows": 120,
        "serve.app_name": APP,
        "serve.route_prefix": PREFIX,
        "serve.port": free_port(),  # used only when this module starts Serve
    })
    proc, output, ready = rayrec_serve(ray_cluster.address, env["overrides"] | {"serve.checkpoint": env["adapters"][1]})
    if not ready.wait(300) or proc.poll() is not None:
        proc.kill()
        pytest.fail("`rayrec serve` did not come up:\n" + "".join(output[-40:]))
    url = next(line for line in output if line.startswith("rayrec endpoint: ")).split()[2]
    url = url.removesuffix("/recommend")
    wait_ranker(url, lambda r: r["version"] == vid(env["adapters"][1]))
    yield {"url": url, "proc": proc, "env": env, "ledger": Ledger(), "output": output,
           "address": ray_cluster.address}
    if proc.poll() is None:  # the SIGTERM test did not run: stop it the same way
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    print("\nfault suite figures:\n" + json.dumps(FIGURES, indent=1))


def test_killed_policy_state_heals_and_keeps_its_learning(endpoint):
    """ray.kill of a policy's named state actor: the next requests succeed (degraded at most),
    the actor is re-created from its persisted state, /healthz is ready again."""
    import ray
    from rayrec.serving.bandit import ACTOR_PREFIX, NAMESPACE

    url, ledger = endpoint["url"], endpoint["ledger"]
    with httpx.Client(timeout=30) as c:
        # Something learned to keep: a click on a slate the policy chose. The policy's first
        # request creates its state actor; on a slow machine that can outlast the call's timeout
        # and the answer is degraded (not the policy's slate, nothing to click on): ask again.
        deadline = time.monotonic() + 120
        while True:
            body = ledger.recommend(c, url, {"user_id": "u2", "k": 3, "policy": "ucb1"}, "policy_kill").json()
            if body["degraded_reason"] is None and ledger.give_feedback(c, url, body):
                break
            assert time.monotonic() < deadline, body
            time.sleep(1.0)
        name = f"{ACTOR_PREFIX}:{APP}:ucb1"
        actor = ray.get_actor(name, namespace=NAMESPACE)
        assert ray.get(actor.close.remote())  # persist (as its persist_every would), then kill it
        ray.kill(actor)
        for _ in range(5):
            r = ledger.recommend(c, url, {"user_id": "u2", "k": 3, "policy": "ucb1"}, "policy_kill")
            assert r.status_code == 200, r.text
            reason = r.json()["degraded_reason"]
            assert reason is None or reason.startswith("policy_unavailable"), r.json()
        stats = ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote())
        assert stats["restored"] and stats["total_updates"] >= 1, stats
        ledger.give_feedback(c, url, r.json())
        health = c.get(f"{url}/healthz")
        assert health.status_code == 200 and "error" not in health.json()["policies"]["ucb1"], health.text
        assert c.get(f"{url}/livez").json() == {"status": "alive"}
    FIGURES["policy_actor_killed"] = ledger.counts("policy_kill")


def test_ranking_replica_killed_under_load(endpoint):
    """Two clients keep asking while the only ranking replica is killed: no request fails
    (they degrade to retrieval order until Serve has replaced the replica)."""
    import ray

    url, ledger = endpoint["url"], endpoint["ledger"]
    before = wait_ranker(url, lambda r: "replica" in r)["ranker"]["replica"]
    stop = threading.Event()
    threads = _load(ledger, url, "replica_kill", stop)
    try:
        time.sleep(2.0)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "serve" and f"{APP}#Ranking#" in a["name"]]
        assert names, "no ranking replica actor found"
        for n in names:
            ray.kill(ray.get_actor(n, namespace="serve"), no_restart=True)
        wait_ranker(url, lambda r: r.get("replica") not in (None, before), timeout=180)
        time.sleep(2.0)
    finally:
        _stop(stop, threads)
    counts = ledger.counts("replica_kill")
    FIGURES["ranking_replica_killed"] = counts | {"sent": sum(counts.values())}
    assert set(counts) <= {"ok", "degraded"}, counts  # no 5xx, no connection error
    assert counts.get("ok", 0) > 0


def test_event_log_storage_fails_then_recovers(endpoint):
    """The impressions directory turns into a file (writes fail): requests are still answered
    while the buffer holds them, then 503 + Retry-After (back-pressure, never a silent drop);
    /healthz says so. Once storage is back, the buffered rows are written and nothing is lost."""
    from rayrec.serving.eventlog import read_events

    url, ledger, env = endpoint["url"], endpoint["ledger"], endpoint["env"]
    events = Path(env["cfg"].event_log_dir)
    imp = events / "impressions"
    imp.rename(events / "impressions.down")
    imp.write_text("storage outage")
    outage_ids: list[str] = []
    try:
        with httpx.Client(timeout=30) as c:
            for _ in range(60):
                r = ledger.recommend(c, url, {"user_id": "u3", "k": 4}, "storage_outage")
                if r.status_code == 503:
                    assert r.headers["retry-after"] and r.json()["error"] == "event log unavailable"
                    break
                assert r.status_code == 200, r.text
                outage_ids.append(r.json()["request_id"])
            else:
                pytest.fail("the buffer never filled: 60 requests of 4 rows over max_buffered_rows=120")
            health = c.get(f"{url}/healthz")
            assert health.status_code == 503 and health.json()["event_log"]["last_error"], health.text
            buffered = health.json()["event_log"]["buffered_rows"]
    finally:
        imp.unlink()
        (events / "impressions.down").rename(imp)
    deadline = time.time() + 60
    while True:  # the background flush retries every event_flush_interval_s
        h = httpx.get(f"{url}/healthz", timeout=10).json()["event_log"]
        if h["buffered_rows"] == 0 and not h["last_error"]:
            break
        assert time.time() < deadline, h
        time.sleep(0.5)
    with httpx.Client(timeout=30) as c:
        assert ledger.recommend(c, url, {"user_id": "u3", "k": 4}, "storage_outage").status_code == 200
    on_disk = set(read_events(str(events))[0]["request_id"])
    counts = ledger.counts("storage_outage")
    FIGURES["event_log_storage_outage"] = counts | {
        "acknowledged_during_outage": len(outage_ids), "rows_buffered_at_503": buffered,
        "acknowledged_on_disk_after_recovery": len(set(outage_ids) & on_disk)}
    assert set(outage_ids) <= on_disk
    assert counts.get("503") == 1


def test_garbled_part_file_is_quarantined(endpoint):
    """A garbled and an empty part file next to the endpoint's own: readers move them to
    _quarantine/ (counted) and read the rest."""
    from rayrec.serving.eventlog import read_events, read_report

    url, ledger = endpoint["url"], endpoint["ledger"]
    deadline = time.time() + 30
    while httpx.get(f"{url}/healthz", timeout=10).json()["event_log"]["buffered_rows"]:
        assert time.time() < deadline
        time.sleep(0.3)
    events = Path(endpoint["env"]["cfg"].event_log_dir)
    (events / "impressions" / "part-0-garbled-000001.parquet").write_bytes(b"PAR1 not really parquet")
    (events / "feedback" / "part-0-empty-000001.parquet").write_bytes(b"")
    imps, _ = read_events(str(events))
    report = read_report(str(events))
    assert report["impressions_quarantined"] == 1 and report["feedback_quarantined"] == 1, report
    assert set(ledger.slates) <= set(imps["request_id"])  # everything acknowledged so far
    FIGURES["garbled_part_files"] = report


def test_openapi_fuzz_no_5xx_and_responses_conform(endpoint):
    """schemathesis over the app's own OpenAPI, valid and invalid inputs for every operation:
    no 5xx, every status, header and body as documented."""
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig

    # 413 (body over serve.max_body_bytes) is a rejection too; the rest are schemathesis' defaults.
    rejected = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": rejected}}})
    schema = schemathesis.openapi.from_url(f"{endpoint['url']}/openapi.json", config=config)
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=100, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate])
            def call(case) -> None:
                response = case.call_and_validate(base_url=endpoint["url"], timeout=30)
                statuses[f"{case.method} {case.path} {response.status_code}"] += 1

            try:
                call()
            except Unsatisfiable:  # no invalid input exists (e.g. GET /livez has no parameters)
                assert mode is GenerationMode.NEGATIVE, operation.label
    FIGURES["schemathesis"] = dict(statuses) | {"cases": sum(statuses.values())}
    assert sum(statuses.values()) >= 300


def test_signals_during_startup_exit_cleanly(endpoint):
    """Ctrl-C while the app is still deploying, and a SIGTERM right behind it (a double Ctrl-C,
    or a kill sent to the process group): one clean path (exit 0, no traceback, the
    half-deployed app and its policy actors removed); the second signal does not cut it short."""
    import ray
    from ray import serve

    name = "rayrec_faults_startup"
    proc, output, _ = rayrec_serve(endpoint["address"],
                                    endpoint["env"]["overrides"] | {
                                        "serve.app_name": name, "serve.route_prefix": "/faults_startup"})
    deadline = time.time() + 120
    while name not in serve.status().applications:
        assert proc.poll() is None and time.time() < deadline, "".join(output[-40:])
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, "".join(output[-40:])
    text = "".join(output)
    assert "stopping the rayrec endpoint" in text and "Traceback" not in text, text[-3000:]
    assert name not in serve.status().applications
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if f":{name}:" in a["name"]]


def test_sigterm_during_traffic_keeps_every_acknowledged_event(endpoint):
    """SIGTERM to `rayrec serve` while two clients send: it exits cleanly, and every slate it
    answered with 200 in this module (and every feedback it recorded) is in the event log."""
    from rayrec.serving.eventlog import read_events

    url, ledger, proc = endpoint["url"], endpoint["ledger"], endpoint["proc"]
    stop = threading.Event()
    threads = _load(ledger, url, "sigterm", stop)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(180)
    finally:
        _stop(stop, threads)
    assert code == 0, "".join(endpoint["output"][-40:])
    assert any("stopping the rayrec endpoint" in line for line in endpoint["output"])
    imps, fb = read_events(str(endpoint["env"]["cfg"].event_log_dir))
    rows = imps.groupby("request_id").size().to_dict()
    missing = {r: n for r, n in ledger.slates.items() if rows.get(r) != n}
    assert not missing, f"{len(missing)} acknowledged slates not (fully) on disk: {list(missing.items())[:5]}"
    assert not imps.duplicated(["request_id", "position"]).any()
    logged = set(zip(fb["request_id"], fb["item_id"].astype(str), strict=True))
    assert ledger.feedback <= logged, ledger.feedback - logged
    counts = ledger.counts("sigterm")
    FIGURES["sigterm_during_traffic"] = counts | {"exit_code": code}
    FIGURES["acknowledged_vs_on_disk"] = {
        "slates_acknowledged": len(ledger.slates), "slates_on_disk": sum(r in rows for r in ledger.slates),
        "impressions_acknowledged": sum(ledger.slates.values()),
        "impressions_on_disk_of_those": int(sum(rows.get(r, 0) for r in ledger.slates)),
        "feedback_recorded": len(ledger.feedback), "feedback_on_disk": len(ledger.feedback & logged)}
