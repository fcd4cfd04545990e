"""The feedback loop: served impressions and feedback → training examples → a new adapter,
fine-tuned from the current one → evaluated against it → promoted only when it is better.

Promotion records the new checkpoint in ``<run_dir>/feedback/promoted_checkpoint``; deploying
the endpoint's config with ``serve.checkpoint`` set to it (``serve deploy``) switches the ranking
replicas in place through their ``user_config``. Switching an endpoint started with
``serve.run`` from here is not done yet: a re-run redeploys every deployment.

Examples follow ``rayrec.data.schema.EXAMPLE_COLUMNS``: for every clicked item of a served
slate, the clicked item is the positive and the slate's unclicked items are the negatives
(shown-and-skipped: the hardest negatives there are). The user's history is the feature
store's history, rendered by the one history renderer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.config import RayrecConfig
from rayrec.data.schema import EXAMPLE_COLUMNS, EXAMPLES_DIR

log = logging.getLogger("rayrec")


def feedback_examples(cfg: RayrecConfig) -> pd.DataFrame:
    """Training examples from the endpoint's event log (known users, slates with a click)."""
    from rayrec.data import store
    from rayrec.data.text import render_history
    from rayrec.explore.ope import join_events
    from rayrec.serving.eventlog import read_events

    impressions, feedback = read_events(cfg.event_log_dir)
    shown = join_events(impressions, feedback)
    shown = shown[(shown["user_idx"] >= 0) & ~shown["degraded"].astype(bool)]
    texts = store.load_items(cfg.data_dir).set_index("item_idx")["text"]
    histories = store.load_histories(cfg.data_dir).set_index("user_idx")["history"]
    rows = []
    for _, slate in shown.groupby("request_id", sort=False):
        clicked = slate[slate["reward"] > 0]
        skipped = slate[slate["reward"] <= 0]["item_idx"].astype(np.int64).tolist()
        if clicked.empty or not skipped:
            continue
        user = int(slate["user_idx"].iloc[0])
        history = [int(i) for i in histories.get(user, [])]
        for item in clicked["item_idx"].astype(np.int64):
            candidates = [int(item), *skipped]
            rows.append({
                "user_idx": user, "history": history,
                "history_text": render_history([texts[i] for i in history]),
                "candidates": candidates, "labels": [1.0] + [0.0] * len(skipped),
                "candidate_texts": [texts[i] for i in candidates],
                "timestamp": int(slate["timestamp"].max()),
            })
    return pd.DataFrame(rows, columns=list(EXAMPLE_COLUMNS))


def _ndcg10(result: dict[str, Any]) -> float:
    return float(result["models"]["ranker"]["ndcg@10"])


def run_feedback_loop(cfg: RayrecConfig, steps: int | None = None) -> dict[str, Any]:
    """One round: build examples from the log, fine-tune from the current adapter, evaluate
    both on the validation split, and promote the new adapter when its NDCG@10 is higher."""
    from rayrec.evaluation.evaluate import run_evaluation
    from rayrec.runtime import UserFacingError, init_ray
    from rayrec.train.checkpoint import latest_checkpoint
    from rayrec.train.trainer import run_training

    init_ray(cfg.ray)
    current = cfg.serve.checkpoint or latest_checkpoint(cfg.checkpoint_dir)
    if current is None:
        raise UserFacingError(f"no current ranker under {cfg.checkpoint_dir}: run `rayrec train` first")
    examples = feedback_examples(cfg)
    if examples.empty:
        raise UserFacingError(
            f"the event log at {cfg.event_log_dir} holds no clicked slates of known users yet")
    round_dir = Path(cfg.run_dir).expanduser().resolve() / "feedback" / time.strftime("%Y%m%d-%H%M%S")
    data_dir = round_dir / "data"
    for split, frame in (("train", examples), ("valid", None)):
        out = data_dir / EXAMPLES_DIR / split
        out.mkdir(parents=True, exist_ok=True)
        if frame is None:  # validate on the preprocessed validation examples
            from rayrec.data import store

            frame = store.read_pandas(cfg.data_dir, "examples", split)
        frame.to_parquet(out / "part-0.parquet", index=False)
    batch = min(cfg.train.batch_size, len(examples))
    tuned_cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"out": str(data_dir)}),
        "train": cfg.train.model_copy(update={
            "init_from": current, "storage_path": str(round_dir / "checkpoints"), "batch_size": batch,
            "max_steps": steps or cfg.train.max_steps, "num_workers": 1,
        }),
    })
    log.info("feedback: %d examples from the event log; fine-tuning from %s", len(examples), current)
    trained = run_training(tuned_cfg)
    candidate = trained.best_checkpoint or trained.checkpoint

    def evaluate(checkpoint: str, name: str) -> float:
        ev = cfg.evaluate.model_copy(update={"split": "valid", "checkpoint": checkpoint,
                                             "out": str(round_dir / f"eval_{name}")})
        return _ndcg10(run_evaluation(cfg.model_copy(update={"evaluate": ev})))

    before, after = evaluate(current, "current"), evaluate(candidate, "candidate")
    promoted = after > before
    if promoted:  # what `serve deploy` with serve.checkpoint (an in-place reconfigure) picks up
        (round_dir.parent / "promoted_checkpoint").write_text(candidate)
    result = {"examples": len(examples), "current": current, "candidate": candidate,
              "valid_ndcg@10": {"current": before, "candidate": after}, "promoted": promoted,
              "round_dir": str(round_dir)}
    log.info("feedback: %s", result)
    return result
