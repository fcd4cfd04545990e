"""The public HTTP API of the endpoint: FastAPI ingress -> Retrieval -> Ranking -> policy
(-> Generation for explanations).

Per request: retrieval turns the user's history and/or free text into candidates (from the
indexes and/or the language model), the ranking deployment scores them (batched), the
exploration policy picks the slate (with optional MMR/DPP diversity) and logs its
propensities; with ``explain`` the generation deployment writes a sentence for the top items
within a time budget. Impressions, explanations and feedback go to the event log. If ranking
fails or is slow the slate falls back to retrieval order with ``degraded: true``; if the
policy state is down, to greedy on the scores; if generation fails, the index candidates and
no explanations, said in the response.

The app-level HTTP pieces (error bodies, auth, body limit, OpenAPI) are in ``serving.http_app``;
they read their per-replica settings (API keys, limits) from this ingress instance.
"""

# No `from __future__ import annotations`: FastAPI must see the real request model types
# on the methods Serve rewrites into routes.
import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from rayrec.config import RayrecConfig, validate_config
from rayrec.data.text import render_history
from rayrec.explore.features import request_features
from rayrec.explore.policies import POLICIES, ArmPolicy
from rayrec.ratelimit import TokenBuckets
from rayrec.serving.api import (
    AddItemsRequest,
    AddItemsResponse,
    FeedbackRequest,
    FeedbackResponse,
    HideItemsRequest,
    HideItemsResponse,
    RecommendRequest,
    RecommendResponse,
    admin_responses,
    error_responses,
    key_id,
    key_is_valid,
    load_api_keys,
)
from rayrec.serving.bandit import BanditClient, PolicyUnavailable
from rayrec.serving.calls import wait_for
from rayrec.serving.eventlog import EventLogWriter
from rayrec.serving.http_app import (
    bad_request,
    fastapi_app,
    presented_key,
    require_admin_key,
    require_key,
)
from rayrec.serving.retrieval import RetrievalRequest
from rayrec.serving.slate import (
    explanation_rows,
    greedy_fallback,
    impression_rows,
    rank_scores_or_reason,
    slate_items,
)

log = logging.getLogger("ray.serve")


def _admin_and_client_keys(sc, api_keys: list[str]) -> tuple[list[str], list[str]]:
    """(admin keys, the client keys to recognise on the admin routes). An admin key that is
    also a client key would let every client change the catalog: refused at start."""
    admin = load_api_keys(sc.admin_api_keys_env, sc.admin_api_keys_file)
    client = api_keys
    if not client:  # auth off for clients: their keys are still told apart from admin keys
        try:
            client = load_api_keys(sc.api_keys_env, sc.api_keys_file)
        except OSError:
            client = []
    if set(admin) & set(client):
        raise ValueError(f"a key in ${sc.admin_api_keys_env} / serve.admin_api_keys_file is also a client key "
                         f"(${sc.api_keys_env} / serve.api_keys_file): admin keys must be separate")
    return admin, client


@serve.deployment(name="Ingress")
@serve.ingress(fastapi_app)
class RecommenderIngress:
    """The public HTTP API; composes the retrieval and ranking deployments by handle."""

    def __init__(self, cfg: dict[str, Any], retrieval: DeploymentHandle, ranking: DeploymentHandle,
                 generation: DeploymentHandle | None = None) -> None:
        self.cfg: RayrecConfig = validate_config(cfg, "serve ingress")
        sc = self.cfg.serve
        self.retrieval = retrieval
        self.ranking = ranking
        self.generation = generation  # None unless serve.generation.enabled
        # Read by the route dependencies and middleware through the replica context (_ingress).
        self.api_keys = load_api_keys(sc.api_keys_env, sc.api_keys_file) if sc.require_api_key else []
        if sc.require_api_key and not self.api_keys:
            raise ValueError(
                f"serve.require_api_key is on but no keys were found in ${sc.api_keys_env} "
                f"or serve.api_keys_file={sc.api_keys_file!r}"
            )
        self.admin_keys, self.client_keys = _admin_and_client_keys(sc, self.api_keys)
        # one token bucket per client key id (per replica): serve.key_quota_per_s
        self.quota = (TokenBuckets(sc.key_quota_per_s, sc.key_quota_burst)
                      if sc.require_api_key and sc.key_quota_per_s else None)
        try:
            ctx = serve.get_replica_context()
            replica, app_name = ctx.replica_id.unique_id, ctx.app_name
        except Exception:  # constructed outside Serve
            replica, app_name = uuid.uuid4().hex[:8], sc.app_name
        self.events = EventLogWriter(
            self.cfg.event_log_dir, sc.event_flush_rows, sc.event_flush_interval_s, writer_id=replica,
            max_buffered_rows=sc.event_max_buffered_rows,
        )
        self.bandit = BanditClient(self.cfg, app_name, stream=replica)
        self._slates: OrderedDict[str, dict[str, Any]] = OrderedDict()  # request_id -> served slate
        # (request_id, item_id) of feedback rows this replica handed to the event log: a retry of
        # one whose row never made it (a 503 after the policy learned) writes it then
        self._feedback_logged: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Requests and their latency by route and status code are Serve's own (its proxy exports
        # serve_num_http_requests, serve_num_http_error_requests and serve_http_request_latency_ms,
        # tagged route, method, application, status_code); these are what it cannot see.
        self._degraded = metrics.Counter(
            "rayrec_degraded_total", description="Responses served in retrieval order, by reason.",
            tag_keys=("reason",),
        )
        self._latency = metrics.Histogram(
            "rayrec_stage_latency_ms", description="Latency per pipeline stage.",
            boundaries=[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
            tag_keys=("stage",),
        )
        log.info("ingress ready: events -> %s, auth %s, catalog changes %s", self.cfg.event_log_dir,
                 "on" if sc.require_api_key else "off", "on (admin keys)" if self.admin_keys else "off")

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown: write out the buffered events.
        events = getattr(self, "events", None)
        if events is not None:
            events.close()
        bandit = getattr(self, "bandit", None)
        if bandit is not None:
            bandit.close()

    # ---- routes ------------------------------------------------------------------------
    @fastapi_app.get("/livez")
    async def livez(self) -> dict[str, str]:
        """Liveness only: the ingress answers (restart it if not); says nothing of its dependencies."""
        return {"status": "alive"}

    @fastapi_app.get("/healthz", responses={503: {"description": "a dependency is unavailable: the "
                                                  "endpoint serves degraded (same body, status 'degraded')"}})
    async def healthz(self, request: Request) -> JSONResponse:
        """Readiness at full quality: 200 when every dependency is up, 503 when any is not
        (requests are still answered, degraded). The body is ``{"status"}`` only, unless the
        caller presents a client or admin key (or the endpoint needs no key at all): then each
        dependency's state too (catalog, ranker, the policy states this replica uses, the event
        log), with the ranker named by its opaque version id."""
        out: dict[str, Any] = {"status": "ok"}
        calls = [("catalog", self.retrieval.catalog_info), ("ranker", self.ranking.info)]
        if self.generation is not None:
            calls.append(("generation", self.generation.info))
        for key, call in calls:
            try:
                out[key] = await wait_for(call.remote(), 5.0)
            except Exception as e:
                out[key], out["status"] = {"error": type(e).__name__}, "degraded"
        if (out["catalog"] or {}).get("catalog_error"):  # added items cannot be loaded
            out["status"] = "degraded"
        ev = self.events
        out["event_log"] = {"buffered_rows": ev.buffered, "max_buffered_rows": ev.max_buffered_rows,
                            "rows_written": dict(ev.rows_written), "last_error": ev.last_error}
        if ev.last_error:
            out["status"] = "degraded"
        out["policies"] = await self.bandit.stats()
        if any("error" in s for s in out["policies"].values()):
            out["status"] = "degraded"
        code = 200 if out["status"] == "ok" else 503
        if not self._may_see_details(request):  # a probe or a stranger: up or down, nothing more
            return JSONResponse({"status": out["status"]}, status_code=code)
        if isinstance(out.get("ranker"), dict):
            out["ranker"].pop("checkpoint", None)  # a storage path: the operator's, not a client's
        return JSONResponse(jsonable_encoder(out), status_code=code)

    def _source(self, request: Request) -> str | None:
        """The client's identity (its key's id), or None on an endpoint without client keys."""
        if not self.cfg.serve.require_api_key:
            return None
        presented = presented_key(request)
        return key_id(presented) if presented else None

    def _may_see_details(self, request: Request) -> bool:
        if not self.cfg.serve.require_api_key and not self.admin_keys:
            return True  # every route is open: the details are as public as /recommend
        presented = presented_key(request)
        return key_is_valid(presented, self.api_keys) or key_is_valid(presented, self.admin_keys)

    @fastapi_app.post("/recommend", response_model=RecommendResponse, dependencies=[Depends(require_key)],
                      responses=error_responses("recommend", (400, 401, 404, 413, 422, 429, 503)))
    async def recommend(self, req: RecommendRequest, request: Request) -> RecommendResponse:
        """Top-k items for a user and/or history and/or free-text query."""
        return await self._recommend(req, self._source(request))

    @fastapi_app.post("/feedback", response_model=FeedbackResponse, dependencies=[Depends(require_key)],
                      responses=error_responses("feedback", (400, 401, 404, 413, 422, 429, 503)))
    async def feedback(self, req: FeedbackRequest, request: Request) -> FeedbackResponse:
        """Record a reward for an item of a served slate and update the policy's state."""
        item_id, source = str(req.item_id), self._source(request)
        self.events.check_capacity()  # 503 before the policy learns what could not be logged
        lo, hi = self.cfg.serve.reward_min, self.cfg.serve.reward_max
        if not lo <= req.reward <= hi:
            raise bad_request(f"reward: must be within [{lo}, {hi}] (serve.reward_min/max), got {req.reward}")
        slate = self._slates.get(req.request_id)
        if slate is not None:
            if item_id not in slate["pos_of"]:
                raise bad_request(f"item_id {item_id!r} was not shown in request {req.request_id!r}", 404)
            policy, item_idx = slate["policy"], slate["item_idx"][slate["pos_of"][item_id]]
            if slate["learned"]:
                status = await self.bandit.feedback(policy, req.request_id, item_idx, float(req.reward), source)
            else:  # served greedy while the policy was unavailable: logged, deduplicated here
                status = "duplicate" if item_id in slate["rewarded"] else "recorded"
            slate["rewarded"].add(item_id)
        else:  # served by another ingress replica (or expired): the shared policy state knows
            item_idx = await self._retrieval_call(self.retrieval.lookup_item.remote(item_id))
            policy, status = None, ""
            if item_idx is not None:
                policy, status = await self.bandit.feedback_any(req.request_id, item_idx, float(req.reward),
                                                                source)
        if not status:
            raise bad_request(
                f"unknown or expired request_id {req.request_id!r} (or item {item_id!r} not shown in it)", 404)
        # A duplicate is acknowledged, never learned again; its row is written if this replica
        # has not written it (the first try failed after the policy learned, or another replica
        # took it: readers keep one row per (request_id, item_id), so the log holds it once).
        key = (req.request_id, item_id)
        if status == "recorded" or key not in self._feedback_logged:
            self.events.log_feedback([{
                "request_id": req.request_id, "timestamp": time.time(), "item_idx": int(item_idx),
                "item_id": item_id, "reward": float(req.reward), "source": source,
            }])  # EventLogFull: a 503, and the retry comes back here
            self._feedback_logged[key] = None
            while len(self._feedback_logged) > self.cfg.serve.request_cache_size:
                self._feedback_logged.popitem(last=False)
        return FeedbackResponse(request_id=req.request_id, item_id=item_id, reward=float(req.reward),
                                policy=policy, recorded=status == "recorded", duplicate=status == "duplicate")

    # ---- catalog changes (admin) ---------------------------------------------------------
    @fastapi_app.post("/items", response_model=AddItemsResponse, dependencies=[Depends(require_admin_key)],
                      responses=admin_responses(AddItemsResponse))
    async def add_items(self, req: AddItemsRequest) -> JSONResponse:
        """Add items to the running catalog (admin key), no retraining: each row is checked on its
        own, the good ones embedded (the text index and, when it has a text encoder, the
        sequential retriever), persisted and served by every replica within
        serve.catalog_refresh_s. 200 when any row was added, 422 when none was (same body)."""
        self._check_admin_rows(len(req.items), "items")
        out = await self._catalog_call("add_items", [r.model_dump() for r in req.items])
        self._log_catalog("add", out["items"])
        body = AddItemsResponse(added=[it["item_id"] for it in out["items"]], rejected=out["rejected"],
                                note=out["note"], catalog_version=out["version"])
        return JSONResponse(jsonable_encoder(body), status_code=200 if body.added else 422)

    @fastapi_app.post("/items/hide", response_model=HideItemsResponse, dependencies=[Depends(require_admin_key)],
                      responses=admin_responses(HideItemsResponse))
    async def hide_items(self, req: HideItemsRequest) -> JSONResponse:
        """Never recommend these items again, on any path (admin key); persisted like added
        items. 200 when any id was hidden, 422 when none was (same body). With several
        retrieval replicas the answer waits one catalog refresh (serve.catalog_refresh_s), the
        time every replica takes to load the change: after the 200 no replica serves them."""
        self._check_admin_rows(len(req.item_ids), "item_ids")
        out = await self._catalog_call("hide_items", [str(i) for i in req.item_ids])
        self._log_catalog("hide", out["items"])
        sc = self.cfg.serve
        if out["items"] and sc.retrieval_replicas > 1:
            await asyncio.sleep(sc.catalog_refresh_s + 0.5)
        body = HideItemsResponse(hidden=[it["item_id"] for it in out["items"]], rejected=out["rejected"],
                                 catalog_version=out["version"])
        return JSONResponse(jsonable_encoder(body), status_code=200 if body.hidden else 422)

    def _check_admin_rows(self, n: int, field: str) -> None:
        limit = self.cfg.serve.admin_max_rows
        if n > limit:
            raise bad_request(f"{field}: more than {limit} rows (serve.admin_max_rows); send them in batches")
        self.events.check_capacity(n)  # each change is logged: 503 before changing anything

    async def _catalog_call(self, method: str, payload: list) -> dict[str, Any]:
        """The retrieval deployment's catalog change, within serve.admin_timeout_s (a timeout is
        a 503: the rows may still land, and a retry then reports them as already added)."""
        timeout = self.cfg.serve.admin_timeout_s
        try:
            return await wait_for(getattr(self.retrieval, method).remote(payload), timeout + 5.0)
        except TimeoutError:
            raise HTTPException(status_code=503, headers={"Retry-After": "5"}, detail=(
                f"the catalog change did not finish within {timeout}s (serve.admin_timeout_s); rows may "
                "still be added: retry, and rows already added are rejected as such")) from None
        except Exception as e:  # storage or the retrieval replica failing: nothing was committed
            log.warning("catalog %s failed: %s", method, str(e)[-2000:])
            raise HTTPException(status_code=503, headers={"Retry-After": "5"}, detail=(
                f"the catalog change failed ({type(getattr(e, 'cause', None) or e).__name__}); retry, and rows "
                "already added are rejected as such")) from None

    def _log_catalog(self, action: str, items: list[dict[str, Any]]) -> None:
        now = time.time()
        request_id = uuid.uuid4().hex
        self.events.log_catalog([{
            "request_id": request_id, "timestamp": now, "action": action, "item_idx": int(it["item_idx"]),
            "item_id": it["item_id"], "title": it["title"], "category": it["category"],
            "retriever": bool(it.get("retriever", False)),
        } for it in items])
        if items:
            log.info("catalog: %s %d items (request %s)", "added" if action == "add" else "hid", len(items),
                     request_id)

    # ---- pipeline ----------------------------------------------------------------------
    def _check(self, req: RecommendRequest) -> None:
        """The config's limits on a request (the schema's own checks already ran): 4xx/503."""
        sc = self.cfg.serve
        if req.k > sc.max_k:
            raise bad_request(f"k: must be <= {sc.max_k} (serve.max_k), got {req.k}")
        if req.policy is not None and sc.policies is not None and req.policy not in sc.policies:
            raise bad_request(f"policy: {req.policy!r} is not enabled on this endpoint (serve.policies: "
                              f"{', '.join(sc.policies)})")
        self.events.check_capacity(req.k)  # storage down and buffer full: 503, nothing dropped
        if req.query is not None and len(req.query) > sc.max_text_length:
            raise bad_request(f"query: longer than {sc.max_text_length} characters")
        if len(req.history) > sc.max_history_length:
            raise bad_request(f"history: more than {sc.max_history_length} items")
        if self.generation is None and (req.explain or req.source in ("generative", "both")):
            field = "explain" if req.explain else "source"
            raise bad_request(f"{field}: needs the generation deployment (serve.generation.enabled is false)")

    async def _recommend(self, req: RecommendRequest, source: str | None = None) -> RecommendResponse:
        """retrieve -> rank -> the policy's slate -> (explain) -> serve and log; each stage's
        failure degrades the answer (``degraded_reason`` lists why), never fails it."""
        self._check(req)
        sc = self.cfg.serve
        policy = req.policy or sc.default_policy
        t_start = time.perf_counter()
        request_id = uuid.uuid4().hex
        user_id = None if req.user_id is None else str(req.user_id)
        weight = self.cfg.explore.diversity_weight if req.diversity is None else req.diversity
        method = req.diversity_method if weight > 0 else "none"
        # The candidates' embeddings travel (retrieval -> here) only when something reads them: a
        # diversity re-ranker or a contextual policy (every policy but the per-item baselines).
        contextual = not issubclass(POLICIES.get(policy, ArmPolicy), ArmPolicy)
        features_needed = method != "none" or contextual
        cand = await self._retrieval_call(self.retrieval.retrieve.remote(RetrievalRequest(
            user_id=user_id, history=[str(h) for h in req.history], query=req.query, category=req.category,
            num_candidates=max(sc.rank_candidates, req.k), source=req.source, with_embeddings=features_needed,
        )))
        if "error" in cand:  # the request names items or a category the catalog lacks
            raise bad_request(cand["error"], 404)
        t_retrieved = time.perf_counter()
        lat = {"retrieval": (t_retrieved - t_start) * 1000, "retrieval_compute": cand["latency_s"] * 1000}
        reasons: list[str] = []

        ranker_scores, version = None, None
        if cand["item_idx"] and sc.use_ranker:
            ranked = await self._rank(cand, req.query)
            ranker_scores, version, reason = rank_scores_or_reason(ranked)
            lat["ranking"] = (time.perf_counter() - t_retrieved) * 1000
            if reason is None:  # of which the model's forward pass (the rest: the hop and the queue)
                lat["ranking_forward"] = ranked.get("forward_ms", 0.0)
            else:
                self._degrade(request_id, reasons, reason)
        if cand.get("generation_error"):  # served from the indexes instead of (or without) the LM
            self._degrade(request_id, reasons, f"generation_unavailable: {cand['generation_error']}")
        retrieval_scores = np.asarray(cand["score"], dtype=np.float64)
        final = retrieval_scores if ranker_scores is None else ranker_scores

        t_policy = time.perf_counter()
        embeddings = np.asarray(cand["embeddings"], dtype=np.float64) if features_needed else None
        new = np.asarray(cand["new"], dtype=bool)
        picks, props, learned = [], [], True
        if len(final):
            try:
                features = (request_features(self.cfg.explore, embeddings, cand["context"], new)
                            if contextual else embeddings)
                slate = await self.bandit.select(policy, final, req.k, features, np.asarray(cand["item_idx"]),
                                                 request_id, diversity=method, diversity_weight=weight,
                                                 embeddings=embeddings, new=new, source=source)
                picks, props = slate.indices.tolist(), slate.propensities.tolist()
            except PolicyUnavailable as e:  # logged as what it was: greedy, propensity 1
                (picks, props), learned = greedy_fallback(final, req.k), False
                self._degrade(request_id, reasons, f"policy_unavailable: {e}")
        lat["policy"] = (time.perf_counter() - t_policy) * 1000

        explained: list[dict] | None = None
        if req.explain and picks:
            t_explain = time.perf_counter()
            explained = await self._explain(cand, picks, req.query)
            lat["explain"] = (time.perf_counter() - t_explain) * 1000

        items = slate_items(cand, picks, props, retrieval_scores, ranker_scores, final, explained)
        now, degraded = time.time(), bool(reasons)
        self.events.log_impressions(impression_rows(request_id, now, user_id, cand, policy, items, picks, degraded,
                                                    source))
        if explained is not None:
            self.events.log_explanations(explanation_rows(request_id, now, items, explained))
        self._remember(request_id, policy, [it["item_id"] for it in items],
                       [int(cand["item_idx"][i]) for i in picks], learned=learned)
        lat["total"] = (time.perf_counter() - t_start) * 1000
        for stage, ms in lat.items():
            self._latency.observe(ms, tags={"stage": stage})
        return RecommendResponse(
            request_id=request_id, user_id=user_id, cold_start=not cand["known_user"] and not cand["history"],
            retrieval_source=cand["source"], policy=policy, diversity=float(weight), degraded=degraded,
            degraded_reason="; ".join(reasons) or None, model_version=version, items=items,
            latency_ms={k: round(v, 2) for k, v in lat.items()},
        )

    def _degrade(self, request_id: str, reasons: list[str], reason: str) -> None:
        """Count and log one reason this answer is below full quality."""
        reasons.append(reason)
        self._degraded.inc(tags={"reason": reason.split(":")[0]})
        log.warning("request %s degraded: %s", request_id, reason)

    async def _retrieval_call(self, response):
        """A retrieval call the request needs, within serve.retrieval_timeout_s: no candidates
        means no answer, so past it the request is a 503 + Retry-After (the call is cancelled)."""
        try:
            return await wait_for(response, self.cfg.serve.retrieval_timeout_s)
        except TimeoutError:
            raise HTTPException(status_code=503, headers={"Retry-After": "2"}, detail=(
                f"retrieval did not answer within serve.retrieval_timeout_s="
                f"{self.cfg.serve.retrieval_timeout_s}s")) from None

    async def _rank(self, cand: dict[str, Any], query: str | None) -> dict[str, Any] | BaseException:
        """Ranker scores for the candidates, or the exception/timeout that prevented them."""
        texts = cand["history_texts"][-self.cfg.model.max_history_items :]
        if query and query.strip():
            texts = [*texts, query.strip()]  # the query reads as the most recent thing the user wants
        # The ranker gets the time this request gives up (wall clock): under overload it skips
        # requests that can no longer make it instead of computing answers nobody waits for.
        deadline = time.time() + self.cfg.serve.rank_timeout_s
        response = self.ranking.score.remote(render_history(texts), cand["text"], cand.get("prior"), deadline)
        try:
            return await wait_for(response, self.cfg.serve.rank_timeout_s)
        except TimeoutError:
            return TimeoutError(f"ranking took longer than {self.cfg.serve.rank_timeout_s}s")
        except Exception as e:  # any ranking failure (replica error, overload) degrades the slate
            log.warning("ranking failed: %s", str(e)[-2000:])
            return e

    async def _explain(self, cand: dict[str, Any], picks: list[int], query: str | None) -> list[dict]:
        """One entry per picked item: the generation deployment's sentence and its status for
        the top ``explain_max_items``, ``over_budget`` for the rest (and for all of them when
        the deployment does not answer within the budget: the slate is served regardless)."""
        gc = self.cfg.serve.generation
        budget_s = gc.explain_budget_ms / 1000
        top = [int(cand["item_idx"][i]) for i in picks[: gc.explain_max_items]]
        skipped = [{"item_idx": int(cand["item_idx"][i]), "status": "over_budget", "text": None}
                   for i in picks[len(top):]]
        if not top:
            return skipped
        history = cand["history"] if gc.explain_stored_history else cand["sent_history"]
        response = self.generation.explain.remote(history, query, top, time.time() + budget_s)
        try:  # the deployment stops itself at the deadline; the margin covers the round trip
            out = await wait_for(response, budget_s + 0.5)
        except Exception as e:
            status = "over_budget" if isinstance(e, TimeoutError) else "unavailable"
            log.warning("explanations %s: %s", status, str(e)[-500:])
            out = [{"item_idx": i, "status": status, "text": None} for i in top]
        return out + skipped

    def _remember(self, request_id: str, policy: str, item_ids: list[str], item_idx: list[int],
                  learned: bool = True) -> None:
        """``learned``: the policy's state holds the request (False: a greedy fallback slate,
        whose feedback is logged for retraining but not learned by the policy)."""
        self._slates[request_id] = {
            "policy": policy, "item_idx": item_idx, "learned": learned, "rewarded": set(),
            "pos_of": {iid: p for p, iid in enumerate(item_ids)},
        }
        while len(self._slates) > self.cfg.serve.request_cache_size:
            self._slates.popitem(last=False)


