"""Config section for the sequential retriever (``retriever``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class RetrieverConfig(Section):
    """SASRec-style next-item model: size, loss, optimisation, scaling, where it lives."""

    enabled: bool = True  # the main job trains it and retrieval serves known users with it
    max_len: int = Field(200, ge=2)  # most recent items read per user
    # Longer train histories are also cut into older windows every window_stride items
    # (seqrec.data); None: max_len (each transition trained once); 0: the newest window only.
    window_stride: int | None = Field(None, ge=0)
    dim: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # full: softmax over the whole catalog; sampled: the target against num_negatives uniform
    # items shared by the batch (catalogs too large for a (positions x items) logit matrix).
    loss: Literal["full", "sampled"] = "full"
    num_negatives: int = Field(1024, ge=1)
    # Add a learned projection of each item's text embedding (the text index's vectors) to its
    # id embedding, so items with few or no interactions still get a vector from their text.
    text_init: bool = False
    # text_init only (seqrec.model): the ID part's norm bound (None: unbounded) and the chance
    # that a training step reads an item from its text alone (DropoutNet; new items: always).
    id_max_norm: float | None = Field(None, gt=0)
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # text_init only: the user state adds a learned map of the history's text (seqrec.model),
    # q_t = recency-weighted mean of the text vectors read so far (weight decay^(t - k)).
    text_query: bool = False
    text_query_decay: float = Field(0.9, gt=0.0, le=1.0)
    lr: float = Field(2e-3, gt=0)
    # cosine: lr decays to 0 by max_epochs or max_minutes, whichever comes first (a final
    # model that does not jump around between evaluations); constant: SASRec's original.
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)  # sequences per worker per step
    max_epochs: int = Field(200, ge=1)
    max_minutes: float | None = Field(None, gt=0)  # wall-clock budget; stops at the next evaluation
    eval_every_epochs: int = Field(5, ge=1)
    early_stopping_metric: str = Field("ndcg@10", pattern=r"^((ndcg|hr)@[1-9]\d*)$")
    patience: int = Field(4, ge=1)  # evaluations without improvement before stopping
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    torch_threads: int | None = Field(0, ge=0)  # None: the worker's CPUs; 0: every core of its node
    keep_checkpoints: int = Field(2, ge=1)  # the best by the early-stopping metric are kept
    max_failures: int = Field(1, ge=0)
    # Ranker examples mined from the trained retriever (rayrec.seqrec.mining): the last
    # mine_positions steps of each train sequence whose positive is in the retriever's top
    # mine_candidates, with that list as candidates (what the ranker re-orders when served).
    mine_positions: int = Field(20, ge=1)
    mine_candidates: int = Field(10, ge=2)
    run_name: str = "retriever"
    seed: int = 0
    out: str | None = None  # default: <run_dir>/retriever

    @property
    def stride(self) -> int:
        """The window stride in items (``window_stride`` with None resolved to max_len)."""
        return self.max_len if self.window_stride is None else self.window_stride
