"""Report sections for the run itself: stages, data accounting, training, serving.

Each function takes a stage's result dict (as the main job returns it) and returns markdown
lines: a heading, one sentence saying what the section shows, then tables and figures.
"""

from __future__ import annotations

from typing import Any

from rayrec.report.markdown import cell, image, num, pct, table


def stages(records: list[dict[str, Any]], run_dir: str, total_s: float) -> list[str]:
    lines = ["# rayrec main job report", "",
             f"Run directory `{run_dir}`; the run took {total_s:.0f} s. Each stage either ran, was "
             "reused from an earlier run with the same config, or failed (later stages go on).", ""]
    rows = [[r["name"], f"{r['seconds']:.1f}",
             "reused" if r.get("reused") else ("FAILED: " + r["error"] if r.get("error") else "ran")]
            for r in records]
    return lines + table(["stage", "seconds", "status"], rows, "lrl")


def data(manifest: dict[str, Any]) -> list[str]:
    c = manifest.get("counts", {})
    read = c.get("rows_read", 0)
    balanced = manifest.get("accounting", {}).get("balanced")
    lines = ["", "## Data", "",
             "Where every input row went: kept, rejected by validation (with the reason), removed "
             "as a duplicate, or filtered by the k-core rule; the rows "
             + ("add up to the rows read." if balanced else "do NOT add up to the rows read."), ""]
    rows = [["rows read", read, pct(read, read)], ["kept", c.get("rows_kept", 0), pct(c.get("rows_kept", 0), read)]]
    rows += [[f"rejected: {reason}", n, pct(n, read)] for reason, n in c.get("rejected_by_reason", {}).items()]
    if not c.get("rejected_by_reason"):
        rows.append(["rejected", c.get("rows_rejected", 0), pct(c.get("rows_rejected", 0), read)])
    rows.append(["duplicates removed", c.get("duplicates_removed", 0), pct(c.get("duplicates_removed", 0), read)])
    rows += [[f"filtered: {reason}", n, pct(n, read)] for reason, n in c.get("filtered_by_reason", {}).items()]
    lines += table(["rows", "count", "share of read"], rows)
    splits = c.get("interactions", {})
    if splits:
        lines += ["", f"Kept: {num(c.get('users'))} users, {num(c.get('items'))} items; split by "
                  f"`{manifest.get('split', {}).get('method', '?')}`.", ""]
        lines += table(["split", "interactions", "positives", "examples"],
                       [[s, n, c.get("positives", {}).get(s), c.get("examples", {}).get(s)]
                        for s, n in splits.items()])
    return lines


def training(trained: dict[str, Any], metric: str, plot: str | None) -> list[str]:
    history = trained.get("history") or []
    last = trained.get("metrics") or (history[-1] if history else {})
    lines = ["", "## Training", "",
             f"The ranker's training loss and validation {metric} as training went on (one row per "
             "validation); the best checkpoint by validation is the one evaluated and served.", ""]
    rows = [r for r in history if f"valid_{metric}" in r] or history[-1:]
    if rows:
        lines += table(["step", "epoch", "training loss", f"validation {metric}", "samples/s"],
                       [[r.get("step"), r.get("epoch"), r.get("loss"), r.get(f"valid_{metric}"),
                         num(r.get("samples_per_s"), 1)] for r in rows])
    elif last:
        lines += [f"Final step {num(last.get('step'))}: loss {num(last.get('loss'))} (no history recorded)."]
    lines += ["", f"Best checkpoint: `{trained.get('best_checkpoint') or trained.get('checkpoint')}`."]
    return lines + image("training loss and validation metric by step", plot)


def serving(result: dict[str, Any]) -> list[str]:
    t = result.get("traffic", {})
    lat = t.get("latency_ms", {})
    answered = t.get("requests", 0) - t.get("errors", 0)
    lines = ["", "## Serving", "",
             f"{num(t.get('requests'))} simulated users called the endpoint ({result.get('url')}) with "
             f"the `{t.get('policy')}` policy: the latency they saw, how many answers were degraded "
             "(served without the ranker) and how often they clicked.", ""]
    lines += table(["requests", "errors", "degraded", "degraded rate", "p50 ms", "p95 ms", "p99 ms",
                    "impressions", "clicks", "CTR"],
                   [[t.get("requests"), t.get("errors", 0), t.get("degraded"),
                     pct(t.get("degraded", 0), answered), num(lat.get("p50"), 1), num(lat.get("p95"), 1),
                     num(lat.get("p99"), 1), t.get("impressions"), t.get("clicks"), num(t.get("ctr"), 3)]],
                   "r" * 10)
    samples = result.get("samples", {})
    plain = {n: b for n, b in samples.items() if n not in (GENERATED_SAMPLE, EXPLAINED_SAMPLE)}
    if plain:
        lines += ["", "Sample answers (title and final score; the round trip the client measured):", ""]
        for name, body in plain.items():
            items = body.get("items") or []
            shown = "; ".join(f"{i['title']} ({i['scores']['final']:.3f})" for i in items) or "ok"
            lines.append(f"- **{name}**{_ms(body.get('client_ms'))}: {shown}")
    if GENERATED_SAMPLE in samples:
        lines += generated_sample(samples[GENERATED_SAMPLE])
    if EXPLAINED_SAMPLE in samples:
        lines += explained_sample(samples[EXPLAINED_SAMPLE])
    return lines


# The samples of the generation deployment (rayrec.recipes.traffic.send_samples): each holds its
# ``request``, and the answer with ``client_ms``, or ``skipped`` / ``error`` (said, never hidden).
GENERATED_SAMPLE, EXPLAINED_SAMPLE = "generated_for_query", "explained_known_user"

EXPLANATION_STATUS = {  # rayrec.serving.api.RecommendedItem
    "explained": "served",
    "ungrounded": "withheld: it named a fact the catalog and the history lack",
    "unfinished": "withheld: no whole sentence within serve.generation.explain_max_new_tokens",
    "over_budget": "none: out of time (serve.generation.explain_budget_ms)",
    "unavailable": "none: the generation deployment did not answer",
}


def _ms(value: float | None) -> str:
    return f" ({value:,.0f} ms)" if value is not None else ""


def _not_answered(title: str, sample: dict[str, Any]) -> list[str] | None:
    """The sample's heading line when it has no answer to show (skipped or failed), else None."""
    if sample.get("skipped"):
        return ["", f"**{title}**: not sent ({sample['skipped']})."]
    if sample.get("error") or not isinstance(sample.get("items"), list):
        return ["", f"**{title}**: FAILED: {cell(sample.get('error') or 'no items in the answer')}."]
    return None


def _stage_ms(body: dict[str, Any], stages: dict[str, str]) -> str:
    """The endpoint's own stage times (``latency_ms``), named by ``stages`` (key -> label)."""
    lat = body.get("latency_ms") or {}
    parts = [f"{label} {lat[key]:,.0f} ms" for key, label in stages.items() if key in lat]
    return f" (in the endpoint: {', '.join(parts)})" if parts else ""


def generated_sample(sample: dict[str, Any]) -> list[str]:
    """The list the language model generated for a free-text request, title by title: which
    items it wrote (constrained to the catalog's titles), the ranker's order, the latency; or
    why the index answered instead."""
    request = sample.get("request") or {}
    title = f"Generated for a free-text request \"{cell(request.get('query', ''))}\""
    if (missing := _not_answered(title, sample)) is not None:
        return missing
    s = sample.get("settings") or {}
    generated = sample.get("retrieval_source") == "generative"
    lines = ["", f"**{title}** (a new user, `source: {request.get('source')}`): "
             f"{s.get('backbone', 'the language model')} wrote up to {num(s.get('k'))} titles by beam search "
             f"({num(s.get('beams'))} beams), each constrained to the catalog's titles, unseen ones only; the "
             f"ranker ordered them. Round trip {num(sample.get('client_ms'), 0)} ms"
             f"{_stage_ms(sample, {'retrieval': 'generation and retrieval', 'ranking': 'ranking'})}."]
    if not generated:
        lines += ["", f"NOT GENERATED: {cell(sample.get('degraded_reason') or 'the generation deployment did not answer')}; "
                  f"the `{sample.get('retrieval_source')}` index answered instead."]
    rows = [[it.get("position", p) + 1, cell(it["title"]),
             "language model" if generated else f"index ({sample.get('retrieval_source')})",
             num(it["scores"].get("retrieval"), 3), num(it["scores"].get("final"), 3)]
            for p, it in enumerate(sample["items"])]
    score = "title log-prob" if generated else "retrieval score"
    return lines + [""] + table(["#", "title", "from", score, "final score"], rows, "rllrr")


def explained_sample(sample: dict[str, Any]) -> list[str]:
    """A known user's slate with ``explain: true``: each item's sentence and status (why none
    was served), and the latency."""
    request = sample.get("request") or {}
    title = f"Explanations for user {request.get('user_id')}'s top items"
    if (missing := _not_answered(title, sample)) is not None:
        return missing
    s = sample.get("settings") or {}
    items = sample["items"]
    counts: dict[str, int] = {}
    for it in items:
        status = it.get("explanation_status") or "none"
        counts[status] = counts.get(status, 0) + 1
    lines = ["", f"**{title}** (`explain: true`): {s.get('backbone', 'the language model')} writes one "
             f"sentence each for the top {num(s.get('explain_max_items'))} within "
             f"{num(s.get('explain_budget_ms'), 0)} ms, served only when the grounding check finds nothing "
             f"the catalog and the user's history lack. Round trip {num(sample.get('client_ms'), 0)} ms"
             f"{_stage_ms(sample, {'explain': 'explanations'})}; "
             + ", ".join(f"{n} {status}" for status, n in counts.items()) + "."]
    if not counts.get("explained"):
        lines += ["", "NO EXPLANATION WAS SERVED: see each item's status."]
    top = s.get("explain_max_items")

    def said(position: int, it: dict[str, Any]) -> str:
        if it.get("explanation"):
            return cell(it["explanation"])
        status = it.get("explanation_status")
        if status == "over_budget" and top is not None and position >= top:
            return f"none: only the top {top} are explained (serve.generation.explain_max_items)"
        return EXPLANATION_STATUS.get(status, "none")

    rows = [[it.get("position", p) + 1, cell(it["title"]), it.get("explanation_status") or "none",
             said(it.get("position", p), it)] for p, it in enumerate(items)]
    return lines + [""] + table(["#", "title", "status", "explanation"], rows, "rlll")
