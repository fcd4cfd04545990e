"""From the pipeline's outputs to what is served and logged: pure functions of one request.

The ingress (``serving/ingress.py``) awaits retrieval, ranking, the policy and the
explanations; these turn their answers into the response's items and the event-log rows, so
what a client sees and what training later reads come from the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.serve.exceptions import BackPressureError


def rank_scores_or_reason(result: Any) -> tuple[np.ndarray | None, str | None, str | None]:
    """(scores, adapter version, None) from a ranking answer, or (None, None, degraded reason)."""
    if isinstance(result, BaseException):
        if isinstance(result, TimeoutError):
            return None, None, "ranking_timeout"
        if isinstance(result, BackPressureError):
            return None, None, "ranking_overloaded"
        cause = getattr(result, "cause", None) or result  # unwrap RayTaskError(...)
        return None, None, f"ranking_error: {type(cause).__name__}"
    if result.get("shed"):  # the ranker could not have finished it in time and did not start it
        return None, None, "ranking_overloaded"
    return np.asarray(result["scores"], dtype=np.float64), result["version"], None


def greedy_fallback(final: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The slate when the policy's state is unavailable: greedy on the scores, propensity 1."""
    picks = np.argsort(-final, kind="stable")[:k].tolist()
    return picks, [1.0] * len(picks)


def slate_items(cand: dict[str, Any], picks: list[int], props: list[float], retrieval: np.ndarray,
                ranker: np.ndarray | None, final: np.ndarray, explained: list[dict] | None) -> list[dict]:
    """The response's items, best first: ids, text fields, propensity, each stage's score and,
    with ``explain``, the sentence (served only when grounded) and its status."""
    items = []
    for pos, (i, p) in enumerate(zip(picks, props, strict=True)):
        item = {
            "item_id": cand["item_id"][i], "title": cand["title"][i], "category": cand["category"][i],
            "position": pos, "propensity": float(p),
            "scores": {"retrieval": float(retrieval[i]), "ranker": None if ranker is None else float(ranker[i]),
                       "final": float(final[i])},
        }
        if explained is not None:
            e = explained[pos]
            item |= {"explanation": e["text"] if e["status"] == "explained" else None,
                     "explanation_status": e["status"]}
        items.append(item)
    return items


def impression_rows(request_id: str, now: float, user_id: str | None, cand: dict[str, Any], policy: str,
                    items: list[dict], picks: list[int], degraded: bool, source: str | None = None) -> list[dict]:
    """One event-log row per shown item (eventlog.IMPRESSION_COLUMNS): what was shown, where,
    with which propensity, out of how many candidates, for which client (``source``)."""
    return [{
        "request_id": request_id, "timestamp": now, "user_id": user_id or "",
        "user_idx": int(cand["user_idx"]), "policy": policy, "position": it["position"],
        "item_idx": int(cand["item_idx"][i]), "item_id": it["item_id"], "score": it["scores"]["final"],
        "propensity": it["propensity"], "n_candidates": len(cand["item_idx"]), "degraded": degraded,
        "source": source,
    } for it, i in zip(items, picks, strict=True)]


def explanation_rows(request_id: str, now: float, items: list[dict], explained: list[dict]) -> list[dict]:
    """Every sentence the model wrote, served or withheld, for audit (EXPLANATION_COLUMNS)."""
    return [{
        "request_id": request_id, "timestamp": now, "position": pos, "item_idx": int(e["item_idx"]),
        "item_id": items[pos]["item_id"], "text": e["text"], "status": e["status"],
        "unsupported": "; ".join(e.get("unsupported", [])), "seconds": float(e.get("seconds", 0.0)),
    } for pos, e in enumerate(explained) if e.get("tokens") is not None]  # the model ran
