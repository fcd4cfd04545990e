"""HTTP request/response models of the recommendation endpoint, and the request-level guards
(API keys, body size) that sit in front of it."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rayrec.explore.config import PolicyName

ItemId = str | int  # raw ids as the client knows them (MovieLens ids are numbers)


def _whole_number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's integer: 16 and 16.0 are, "16" and true are not (the request models are strict).
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class RecommendRequest(BaseModel):
    """A recommendation request: who (user_id), what they just saw (history), what they ask (query)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "5" for 5, no false for 0.0

    user_id: ItemId | None = Field(None, description="Raw user id; unknown ids take the cold-start path.")
    history: list[ItemId] = Field(default_factory=list, description="Recent item ids, oldest first.")
    query: str | None = Field(None, description="Free-text query (works for new users too).")
    k: WholeNumber = Field(10, ge=1, description="Number of items to return (at most serve.max_k).")
    policy: PolicyName | None = Field(None, description="Exploration policy (default serve.default_policy).")
    diversity: float | None = Field(None, ge=0, le=1, description="Diversity weight: 0 relevance .. 1 diversity.")
    diversity_method: Literal["mmr", "dpp"] = "mmr"
    category: str | None = Field(None, max_length=200, description="Only items of this category.")
    source: Literal["index", "generative", "both"] | None = Field(
        None, description="Candidates from the retrieval indexes, the language model naming catalog items "
                          "(generative), or both merged (default serve.generation.default_source; "
                          "generative and both need serve.generation.enabled).")
    explain: bool = Field(False, description="A sentence on why each of the top items fits "
                                             "(serve.generation.explain_max_items, within explain_budget_ms).")


class StageScores(BaseModel):
    retrieval: float
    ranker: float | None
    final: float


ExplanationStatus = Literal["explained", "ungrounded", "unfinished", "over_budget", "unavailable"]


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    category: str
    position: int
    scores: StageScores
    propensity: float
    # With "explain": true: the sentence when it passed the grounding check, and why not when
    # it is null (ungrounded: it named a fact the catalog and history lack; unfinished: no whole
    # sentence within explain_max_new_tokens; over_budget: out of time or beyond
    # explain_max_items; unavailable: the generation deployment failed).
    explanation: str | None = None
    explanation_status: ExplanationStatus | None = None


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str | None
    cold_start: bool
    retrieval_source: str
    policy: str
    diversity: float
    degraded: bool
    degraded_reason: str | None
    model_version: str | None
    items: list[RecommendedItem]
    latency_ms: dict[str, float]


class FeedbackRequest(BaseModel):
    """A reward for one item of a served slate."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "5" for 5, no false for 0.0

    request_id: str = Field(min_length=1, max_length=64)
    item_id: ItemId
    reward: float = Field(ge=-1e6, le=1e6, allow_inf_nan=False)


class NewItem(BaseModel):
    """One item to add to the running catalog (POST /items)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: ItemId = Field(description="Raw id, new to the catalog (at most 200 characters).")
    title: str = Field(description="Non-empty, at most 300 characters.")
    genres: list[str] = Field(default_factory=list, description="Genres, the first one the item's category.")
    text: str | None = Field(None, description="Free text appended to the item's text (what the text index "
                                               "and the ranker read; at most serve.max_text_length).")


class AddItemsRequest(BaseModel):
    """Items to add; each row is added or rejected on its own."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[NewItem] = Field(min_length=1, description="At most serve.admin_max_rows rows.")


class HideItemsRequest(BaseModel):
    """Items never to recommend again (catalog items or added ones)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_ids: list[ItemId] = Field(min_length=1, description="At most serve.admin_max_rows ids.")


class RejectedRow(BaseModel):
    item_id: str
    index: int  # the row's position in the request
    reason: str  # the field and what is wrong with it


class AddItemsResponse(BaseModel):
    """200: at least one row added; 422 (same body): every row rejected. Added items are served
    by every replica within serve.catalog_refresh_s, and after a restart."""

    added: list[str]
    rejected: list[RejectedRow]
    note: str | None = None  # e.g. the items reached the text index only (an ID-only retriever)
    catalog_version: int  # the commit this answer saw


class HideItemsResponse(BaseModel):
    hidden: list[str]
    rejected: list[RejectedRow]
    catalog_version: int


class ErrorBody(BaseModel):
    """Every 4xx/5xx body of the app: a short phrase and what was wrong (one line, or one
    line per invalid field for 422 on the request schema)."""

    error: str
    detail: str | list[str]


_ERRORS = {
    400: "the body could not be parsed at all (e.g. not UTF-8)",
    401: "missing or invalid API key",
    413: "request body larger than serve.max_body_bytes",
    422: "invalid request: the fields named in detail (the limits from the config are in this schema)",
    429: "this API key is over its quota (serve.key_quota_per_s); retry after Retry-After",
    503: "a dependency (event log storage, policy state) is unavailable; retry after Retry-After",
}
_NOT_FOUND = {
    "recommend": "the history names an item, or category a category, that is not in the catalog",
    "feedback": "unknown or expired request_id, or the item was not shown in it",
}
_ADMIN_ERRORS = {
    401: "missing or unknown admin key (x-api-key or Authorization: Bearer)",
    403: "no admin keys are configured (serve.admin_api_keys_env / admin_api_keys_file), or a client "
         "key was presented: catalog changes need an admin key",
    413: "request body larger than serve.admin_max_body_bytes",
    503: "the catalog change did not finish within serve.admin_timeout_s, or the event log is down; "
         "retry after Retry-After (rows that did land are then rejected as already added)",
}


def error_responses(route: str, codes: tuple[int, ...]) -> dict[int, dict]:
    """The documented error statuses of one route, each with the one error body."""
    text = _ERRORS | ({404: _NOT_FOUND[route]} if route in _NOT_FOUND else {})
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def admin_responses(model: type[BaseModel]) -> dict[int, dict]:
    """An admin route's statuses: its 422 is either every row rejected (``model``'s body, each
    row with its reason) or a body the schema refuses (the error body)."""
    out = {code: {"model": ErrorBody, "description": text} for code, text in _ADMIN_ERRORS.items()}
    out[400] = {"model": ErrorBody, "description": _ERRORS[400]}
    out[422] = {"description": "every row was rejected (this route's own body, each row with its reason), "
                               "or the body does not match the schema (the error body)",
                "content": {"application/json": {"schema": {"anyOf": [
                    {"$ref": f"#/components/schemas/{model.__name__}"},
                    {"$ref": "#/components/schemas/ErrorBody"}]}}}}
    return out


def with_config_limits(schema: dict, sc) -> dict:
    """Put the limits that come from the serving config (``sc``: ServeConfig) into the
    published OpenAPI, so a schema-valid request is one the endpoint accepts."""
    props = schema.get("components", {}).get("schemas", {})
    rec = props.get("RecommendRequest", {}).get("properties", {})
    if rec:
        rec["k"]["maximum"] = sc.max_k
        rec["history"]["maxItems"] = sc.max_history_length
        rec["query"]["maxLength"] = sc.max_text_length
        if not sc.generation.enabled:  # no generation deployment: only the index, no explanations
            rec["source"]["anyOf"] = [{"type": "string", "enum": ["index"]}, {"type": "null"}]
            rec["explain"]["enum"] = [False]
    fb = props.get("FeedbackRequest", {}).get("properties", {})
    if fb:
        fb["reward"]["minimum"], fb["reward"]["maximum"] = sc.reward_min, sc.reward_max
    for name, field in (("AddItemsRequest", "items"), ("HideItemsRequest", "item_ids")):
        admin = props.get(name, {}).get("properties", {})
        if admin:
            admin[field]["maxItems"] = sc.admin_max_rows
    return schema


class FeedbackResponse(BaseModel):
    request_id: str
    item_id: str
    reward: float
    policy: str
    recorded: bool  # the shared policy state took the reward (learned when the request closes)
    # This (request_id, item_id) already had its reward: acknowledged and ignored (not learned
    # from or logged twice), so a retried POST is safe and a replayed one changes nothing.
    duplicate: bool = False


def load_api_keys(env_var: str, path: str | None) -> list[str]:
    """API keys from the env var (comma separated) and/or a file (one per line, # comments)."""
    keys = [k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip()]
    if path:
        lines = Path(path).expanduser().read_text().splitlines()
        keys += [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    return keys


def key_is_valid(presented: str | None, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    if not presented:
        return False
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(presented.encode(), k.encode())
    return ok


def key_id(key: str) -> str:
    """A key's identity in logs and answers: a short hash, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class BodySizeLimit:
    """ASGI middleware: bodies over the limit get 413 before any parsing happens.

    ``limit(scope)`` gives the current replica's limit for this request (``serve.max_body_bytes``,
    ``admin_max_body_bytes`` on the admin routes); when it returns None (no replica),
    ``max_bytes`` applies.
    """

    def __init__(self, app, limit: Callable[[dict], int | None] = lambda scope: None,
                 max_bytes: int = 65_536) -> None:
        self.app = app
        self.limit = limit
        self.default_max = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope) or self.default_max
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(send, int(declared), limit)
        # No (or a small) declared length: read it all, counting, then replay it downstream.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self._reject(send, size, limit)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, send, size: int, limit: int) -> None:
        payload = json.dumps(
            {"error": "request body too large", "detail": f"{size} bytes > limit {limit}"}
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
