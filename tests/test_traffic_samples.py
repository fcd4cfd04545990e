"""The main job's sample requests and simulated traffic against a fake endpoint (no Ray): the
generation deployment's samples (#25) are sent, timed and kept when they fail; the simulated
traffic stays on the index path."""

from __future__ import annotations

import pandas as pd
import pytest
from rayrec.config import load_config
from rayrec.recipes import traffic
from rayrec.report.sections import EXPLAINED_SAMPLE, GENERATED_SAMPLE


class FakeResponse:
    def __init__(self, status_code: int, body: dict) -> None:
        self.status_code, self._body = status_code, body
        self.headers = {"content-type": "application/json"}
        self.text = str(body)

    def json(self) -> dict:
        return self._body


class FakeEndpoint:
    """Answers /recommend with two items and /feedback with ok; ``fail`` (a predicate on the
    body) answers 503 instead."""

    def __init__(self, fail=lambda body: False) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.fail = fail

    def post(self, path: str, json: dict) -> FakeResponse:
        self.sent.append((path, json))
        if self.fail(json):
            return FakeResponse(503, {"error": "busy", "detail": "generation replica restarting"})
        if path == "/feedback":
            return FakeResponse(200, {"recorded": True})
        items = [{"item_id": str(i), "title": f"T{i}", "scores": {"final": 1.0 - i}, "explanation": None,
                  "explanation_status": "over_budget" if json.get("explain") else None} for i in range(2)]
        return FakeResponse(200, {"request_id": f"r{len(self.sent)}", "degraded": False, "items": items,
                                  "retrieval_source": "generative" if json.get("source") == "generative"
                                  else "sequence", "latency_ms": {"total": 1.0}})


def _cfg(generation: bool):
    return load_config(overrides={"serve.generation.enabled": generation, "serve.generation.beams": 6})


def test_generation_samples_are_sent_timed_and_described() -> None:
    http = FakeEndpoint()
    samples = traffic.send_samples(_cfg(True), http, "u1")
    assert list(samples) == ["known_user", "new_user_query", "exploration", "feedback", GENERATED_SAMPLE,
                             EXPLAINED_SAMPLE]
    assert all(s["client_ms"] >= 0 for s in samples.values())
    bodies = [b for _, b in http.sent]
    # the index's answer to the query, then the language model's to the same query
    assert bodies[1] == {"query": traffic.SAMPLE_QUERY, "k": 5, "source": "index"}
    assert bodies[4] == {"query": traffic.SAMPLE_QUERY, "k": 5, "source": "generative"}
    assert bodies[5] == {"user_id": "u1", "k": 5, "explain": True}
    generated = samples[GENERATED_SAMPLE]
    assert generated["request"] == bodies[4] and generated["retrieval_source"] == "generative"
    assert generated["settings"]["beams"] == 6 and generated["settings"]["backbone"] == "smollm2-135m"
    assert samples[EXPLAINED_SAMPLE]["settings"]["explain_max_items"] == 3


def test_generation_samples_without_the_deployment_or_failing_are_kept_not_raised() -> None:
    http = FakeEndpoint()
    samples = traffic.send_samples(_cfg(False), http, "u1")
    assert len(http.sent) == 4  # nothing the endpoint would refuse is sent
    assert samples[GENERATED_SAMPLE]["skipped"] == samples[EXPLAINED_SAMPLE]["skipped"] \
        == "serve.generation.enabled is false"

    http = FakeEndpoint(fail=lambda body: body.get("source") == "generative")
    samples = traffic.send_samples(_cfg(True), http, "u1")
    assert "503" in samples[GENERATED_SAMPLE]["error"] and "items" not in samples[GENERATED_SAMPLE]
    assert samples[EXPLAINED_SAMPLE]["items"]  # the next sample still went out
    with pytest.raises(RuntimeError, match="503"):  # the pipeline's own samples still fail the stage
        traffic.send_samples(_cfg(True), FakeEndpoint(fail=lambda body: "query" in body), "u1")


def test_simulated_traffic_never_asks_for_generation(monkeypatch) -> None:
    """The simulation's requests (logged and counterfactual) name the index source, so the
    language model's seconds never enter the traffic, whatever serve.generation.default_source."""
    monkeypatch.setattr(traffic, "click_model", lambda cfg, include_test_items=True: lambda u, i: 0.5)
    monkeypatch.setattr(traffic.storage, "write_text", lambda *a, **k: None)
    cfg = load_config(overrides={"serve.generation.enabled": True, "serve.generation.default_source": "both"})
    http = FakeEndpoint()
    out = traffic.simulate_traffic(cfg, http, pd.DataFrame({"user_id": ["1", "2", "3"]}), 5)
    recommends = [b for path, b in http.sent if path == "/recommend"]
    assert out["requests"] == 5 and len(recommends) == 10  # logged + greedy counterfactual
    assert all(b["source"] == "index" and not b.get("explain") for b in recommends)
