"""The feedback loop: served impressions and feedback → training examples → a new adapter,
fine-tuned from the current one → evaluated against it → promoted only when it is better.

Promotion records the new checkpoint in ``<run_dir>/feedback/promoted.json``
(rayrec.checkpoints.promote: under a lock, only over the checkpoint the run still serves; the
run directory may be local or remote), which every later endpoint, evaluation and round reads
(rayrec.checkpoints.served_checkpoint), and, when the endpoint ``serve.app_name`` runs on the same Ray
cluster, switches its ranking replicas to it in place (``rayrec.serving.control.switch_adapter``:
a ranking user_config change, no dropped requests).

Examples follow ``rayrec.data.schema.EXAMPLE_COLUMNS``: for every clicked item of a served
slate, the clicked item is the positive and the slate's unclicked items are the negatives
(shown-and-skipped: the hardest negatives there are). The user's history is the feature
store's history, rendered by the one history renderer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from rayrec import storage
from rayrec.checkpoints import promote, served_checkpoint
from rayrec.config import RayrecConfig
from rayrec.data import store
from rayrec.data.schema import EXAMPLE_COLUMNS, EXAMPLES_DIR, ITEMS_FILE, SOURCE_COLUMN
from rayrec.data.text import render_history
from rayrec.errors import UserFacingError
from rayrec.evaluation.evaluate import run_evaluation
from rayrec.explore.ope import join_events
from rayrec.runtime import init_ray
from rayrec.serving.control import switch_adapter
from rayrec.serving.eventlog import read_events
from rayrec.train.trainer import require_schedulable, run_training

log = logging.getLogger("rayrec")


def feedback_examples(cfg: RayrecConfig) -> pd.DataFrame:
    """Training examples from the endpoint's event log (known users, slates with a click)."""
    impressions, feedback = read_events(cfg.event_log_dir)
    impressions, feedback = attributed_only(impressions, feedback)
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


def attributed_only(impressions: pd.DataFrame, feedback: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the loop may learn from. Once the log holds attributed traffic (an endpoint with
    client keys: rows carry the key's id in ``source``), only that: slates some key asked for,
    and feedback from the key that asked (another key's clicks on them are not its to give). A
    log without any attribution (an endpoint without keys) is used as it is."""
    src = impressions[SOURCE_COLUMN]
    attributed = src.notna() & (src != "")
    if not attributed.any():
        return impressions, feedback
    impressions = impressions[attributed]
    asked = impressions.drop_duplicates("request_id").set_index("request_id")[SOURCE_COLUMN]
    same = feedback[SOURCE_COLUMN].to_numpy() == asked.reindex(feedback["request_id"]).to_numpy()
    dropped = (int((~attributed).sum()), int((~same).sum()))
    if any(dropped):
        log.info("feedback: %d impression rows without a client key and %d feedback rows not from the "
                 "key that asked are left out", *dropped)
    return impressions, feedback[same]


def _ndcg10(result: dict[str, Any]) -> float:
    """The ranker's NDCG@10: end to end on the full catalog (retrieval top-N re-ranked), or on
    the re-ranking diagnostic."""
    models = result["models"]
    name = next((m for m in models if m.endswith("_ranker")), "ranker")
    if name not in models:
        raise UserFacingError("the evaluation scored no ranker (no retrieval stage to re-rank?)")
    return float(models[name]["ndcg@10"])


def run_feedback_loop(cfg: RayrecConfig) -> dict[str, Any]:
    """One round: build examples from the log, fine-tune from the current adapter, evaluate
    both on the validation split, promote the new adapter when its NDCG@10 is higher by more
    than ``feedback.min_improvement``, and switch the running endpoint to it."""
    init_ray(cfg.ray)
    # Before any work: the round trains one worker (plus its data feed); evaluation checks its
    # scoring actors when it starts (scoring_on_ray).
    require_schedulable(cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": 1})}))
    current, how = served_checkpoint(cfg, cfg.serve.checkpoint)
    log.info("feedback: the run serves %s (%s)", current, how)
    if current is None:
        raise UserFacingError(f"no current ranker under {cfg.checkpoint_dir}: run `rayrec train` first")
    examples = feedback_examples(cfg)
    if examples.empty:
        raise UserFacingError(
            f"the event log at {cfg.event_log_dir} holds no clicked slates of known users yet")
    round_dir = cfg.path("feedback", time.strftime("%Y%m%d-%H%M%S"))
    data_dir = storage.join(round_dir, "data")
    # The round's dataset is self-contained: the catalog (popularity priors) comes along.
    storage.write_table(store.load_items(cfg.data_dir), storage.join(data_dir, ITEMS_FILE))
    for split, frame in (("train", examples), ("valid", None)):
        if frame is None:  # validate on the preprocessed validation examples
            frame = store.read_pandas(cfg.data_dir, "examples", split)
        storage.write_table(frame, storage.join(data_dir, EXAMPLES_DIR, split, "part-0.parquet"))
    batch = min(cfg.train.batch_size, len(examples))
    tuned_cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"out": data_dir}),
        "train": cfg.train.model_copy(update={
            "init_from": current, "storage_path": storage.join(round_dir, "checkpoints"), "batch_size": batch,
            "max_steps": cfg.feedback.max_steps or cfg.train.max_steps, "num_workers": 1,
            "examples": "sampled",  # the round's own examples, written above
        }),
    })
    log.info("feedback: %d examples from the event log; fine-tuning from %s", len(examples), current)
    trained = run_training(tuned_cfg)
    candidate = trained.best_checkpoint or trained.checkpoint

    def evaluate(checkpoint: str, name: str) -> float:
        ev = cfg.evaluate.model_copy(update={"split": "valid", "checkpoint": checkpoint, "baselines": False,
                                             "rank_retrieved": True, "out": storage.join(round_dir, f"eval_{name}")})
        return _ndcg10(run_evaluation(cfg.model_copy(update={"evaluate": ev})))

    before, after = evaluate(current, "current"), evaluate(candidate, "candidate")
    promoted, why = False, f"not better by feedback.min_improvement ({cfg.feedback.min_improvement})"
    if after - before > cfg.feedback.min_improvement:  # under the lock, over what the run still serves
        done = promote(cfg, candidate, current, {"current": before, "candidate": after})
        promoted, why = done.path is not None, done.how
    switch: dict[str, Any] = {"switched": False, "reason": why if not promoted else
                              "feedback.switch_endpoint is false"}
    if promoted and cfg.feedback.switch_endpoint:
        switch = switch_adapter(cfg, candidate)
    result = {"examples": len(examples), "current": current, "candidate": candidate,
              "valid_ndcg@10": {"current": before, "candidate": after}, "promoted": promoted,
              "endpoint": switch, "round_dir": round_dir}
    log.info("feedback: %s", result)
    return result
