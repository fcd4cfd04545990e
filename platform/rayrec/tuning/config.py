"""Config section of the tuning job (``tune``, `rayrec tune`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from rayrec.configbase import Section
from rayrec.seqrec.config import RetrieverConfig

# Where and how a trial runs, not what it learns: never a tuning dimension.
NOT_TUNABLE = {"enabled", "num_workers", "use_gpu", "torch_threads", "keep_checkpoints", "max_failures",
               "mine_positions", "mine_candidates", "run_name", "out", "early_stopping_metric"}


class TuneConfig(Section):
    """A search over the retriever's settings, scored on the validation split only: every trial
    trains on the train split and is judged by its best validation metric
    (``retriever.early_stopping_metric``); the test split is never read. The record
    (``<out>/record.json``) keeps the space, the budget, every trial and the choice."""

    search_space: dict[str, list[Any]] = Field(
        default_factory=lambda: {"dropout": [0.2, 0.3], "dim": [64, 96]},
        description="retriever field -> the values tried (e.g. {dropout: [0.2, 0.3], dim: [64, 128]}).",
    )
    num_samples: int | None = Field(
        None, ge=1,
        description="Trials: None runs every combination (a grid); N draws N random combinations.",
    )
    max_concurrent_trials: int = Field(
        1, ge=1, description="Trials at once (each needs the retriever's workers' CPUs).")
    max_epochs: int | None = Field(
        None, ge=1, description="Epochs per trial (the budget); None: retriever.max_epochs.")
    max_minutes: float | None = Field(
        None, gt=0, description="Minutes per trial; None: retriever.max_minutes.")
    seed: int = Field(0, description="Seed of every trial's training (and of the random draws).")
    out: str | None = Field(None, description="Where trials and the record go; None: <run_dir>/tune.")

    @model_validator(mode="after")
    def _space_names_retriever_settings(self) -> TuneConfig:
        if not self.search_space:
            raise ValueError("search_space is empty: name at least one retriever field and its values")
        for name, values in self.search_space.items():
            if name not in RetrieverConfig.model_fields or name in NOT_TUNABLE:
                tunable = sorted(set(RetrieverConfig.model_fields) - NOT_TUNABLE)
                raise ValueError(f"search_space.{name}: not a tunable retriever field; tunable: {tunable}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"search_space.{name}: give a non-empty list of values")
            for v in values:  # each value must be a valid retriever setting on its own
                RetrieverConfig.model_validate({name: v})
        return self
