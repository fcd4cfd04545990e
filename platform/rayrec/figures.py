"""The few numbers a person wants when a stage ends, picked from the stage's result.

One function per stage (the names of ``rayrec main``'s stages and of the CLI commands); a
result of another shape gets its first few plain numbers. Never raises: a summary that cannot
be made is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any


def key_figures(stage: str, result: Any) -> str:
    """``"370 users, 377 items, ..."`` for ``stage``'s ``result``; "" when there is nothing to say."""
    if is_dataclass(result) and not isinstance(result, type):
        result = asdict(result)
    if result is None:
        return ""
    try:
        return _FIGURES.get(stage, _generic)(result)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return _generic(result)


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or value.is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def _preprocess(r: dict) -> str:
    c = r["counts"]
    rejected = c.get("rows_rejected", 0)
    return (f"{_num(c['users'])} users, {_num(c['items'])} items, {_num(c['rows_kept'])} of "
            f"{_num(c['rows_read'])} events kept ({_num(rejected)} rejected), "
            f"{_num(c['examples']['train'])} training examples")


def _retriever(r: dict) -> str:
    metric = next(k for k in r if k.startswith("valid_"))
    return (f"best epoch {r['best_epoch']}: {metric} {_num(r[metric])}, "
            f"{_num(r['sequences_per_s'])} sequences/s; {_num(r['mined']['train'])} mined lists")


def _ranker(r: dict) -> str:
    m = r["metrics"]
    valid = ", ".join(f"{k} {_num(v)}" for k, v in m.items() if k.startswith("valid_"))
    return f"step {m['step']}: loss {_num(m['loss'])}" + (f", {valid}" if valid else "") + \
        f", {_num(m['samples_per_s'])} samples/s"


def _train(r: dict) -> str:
    if "retriever" in r or "ranker" in r:  # `rayrec train`: both stages
        parts = [f"retriever {_retriever(r['retriever'])}" if "retriever" in r else "",
                 f"ranker {key_figures('train', r['ranker'])}" if "ranker" in r else ""]
        return "; ".join(p for p in parts if p)
    return _ranker(r)


def _generator(r: dict) -> str:
    return (f"best step {r['best_step']} of {r['steps']}: valid_loss {_num(r['valid_loss'])}, "
            f"valid_exact {_num(r['valid_exact'])}, {_num(r['examples_per_s'])} examples/s; "
            f"adapter {r['adapter']}")


def _evaluate(r: dict) -> str:
    ranked = sorted(r["models"].items(), key=lambda kv: -kv[1]["ndcg@10"])
    return "NDCG@10 " + ", ".join(f"{name} {_num(m['ndcg@10'])}" for name, m in ranked[:5])


def _serve(r: dict) -> str:
    t = r["traffic"]
    p50 = t.get("latency_ms", {}).get("p50")
    return (f"{_num(t['requests'])} requests, CTR {_num(t['ctr'])}"
            + (f", p50 {p50:.0f} ms" if p50 is not None else "") + f", {_num(t['degraded'])} degraded")


def _bandit(r: dict) -> str:
    ctr = {name: p["ctr"]["mean"] for name, p in r["policies"].items()}
    return "CTR " + ", ".join(f"{name} {_num(v)}" for name, v in sorted(ctr.items(), key=lambda kv: -kv[1]))


def _generic(r: Any) -> str:
    if isinstance(r, str):
        return r
    if not isinstance(r, dict):
        return ""
    plain = [(k, v) for k, v in r.items() if isinstance(v, int | float | str) and not isinstance(v, bool)]
    return ", ".join(f"{k} {_num(v)}" for k, v in plain[:5])


_FIGURES: dict[str, Callable[[Any], str]] = {
    "preprocess": _preprocess,
    "index": _generic,
    "train-retriever": _retriever,
    "train": _train,
    "train-generator": _generator,
    "evaluate": _evaluate,
    "serve": _serve,
    "bandit": _bandit,
}
