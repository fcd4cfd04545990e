"""Report sections for the run itself: stages, data accounting, training, serving.

Each function takes a stage's result dict (as the main job returns it) and returns markdown
lines: a heading, one sentence saying what the section shows, then tables and figures.
"""

from __future__ import annotations

from typing import Any

from rayrec.report.markdown import image, num, pct, table


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
    if samples:
        lines += ["", "Sample answers (title and final score):", ""]
        for name, body in samples.items():
            items = body.get("items") or []
            shown = "; ".join(f"{i['title']} ({i['scores']['final']:.3f})" for i in items) or "ok"
            lines.append(f"- **{name}**: {shown}")
    return lines
