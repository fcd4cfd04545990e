"""Config section for the sequential retriever (``retriever``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class RetrieverConfig(Section):
    """SASRec-style next-item model: size, loss, optimisation, scaling, where it lives."""

    enabled: bool = Field(
        True, description="Train the retriever in the main job and serve known users' retrieval with it."
    )
    max_len: int = Field(200, ge=2, description="Most recent items read per user.")
    window_stride: int | None = Field(
        None,
        ge=0,
        description="Longer train histories are also cut into older windows every this many items; "
        "None: max_len (each transition trained once); 0: the newest window only.",
    )
    dim: int = Field(64, ge=8, description="Width of the item embeddings and the transformer.")
    layers: int = Field(2, ge=1, description="Self-attention layers.")
    heads: int = Field(1, ge=1, description="Attention heads per layer.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout rate of the transformer and embeddings.")
    # sampled is for catalogs too large for a (positions x items) logit matrix.
    loss: Literal["full", "sampled"] = Field(
        "full",
        description="full: softmax over the whole catalog; sampled: the target against num_negatives "
        "uniform items shared by the batch.",
    )
    num_negatives: int = Field(
        1024, ge=1,
        description="sampled loss: uniform negatives shared by each batch.",
    )
    text_init: bool = Field(
        False,
        description="Add a learned projection of each item's text embedding to its id embedding, so items "
        "with few or no interactions still get a vector from their text.",
    )
    id_max_norm: float | None = Field(
        None, gt=0, description="text_init only: norm bound of the id part of item vectors; None: unbounded."
    )
    # DropoutNet: new items are always read from their text.
    id_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="text_init only: chance that a training step reads an item from its text alone.",
    )
    # q_t = recency-weighted mean of the text vectors read so far (weight decay^(t - k)).
    text_query: bool = Field(
        False, description="text_init only: add a learned map of the history's text to the user state."
    )
    text_query_decay: float = Field(
        0.9, gt=0.0, le=1.0,
        description="text_query: weight multiplier per step back in the history's text mean.",
    )
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    # cosine gives a final model that does not jump around between evaluations.
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine",
        description="cosine: lr decays to 0 by max_epochs or max_minutes, whichever comes first; "
        "constant: SASRec's original.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=1, description="Sequences per worker per step.")
    max_epochs: int = Field(200, ge=1, description="Most epochs to train.")
    max_minutes: float | None = Field(
        None, gt=0,
        description="Wall-clock training budget in minutes (stops at the next evaluation); None: no budget.",
    )
    eval_every_epochs: int = Field(5, ge=1, description="Epochs between full-catalog validations.")
    early_stopping_metric: str = Field(
        "ndcg@10", pattern=r"^((ndcg|hr)@[1-9]\d*)$",
        description="Validation metric that picks the best checkpoint (ndcg@K or hr@K).",
    )
    patience: int = Field(4, ge=1, description="Evaluations without improvement before stopping.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP over the users).")
    use_gpu: bool = Field(False, description="Give each worker a GPU.")
    torch_threads: int | None = Field(
        0, ge=0, description="torch threads per worker: None = the worker's CPUs; 0 = every core of its node."
    )
    keep_checkpoints: int = Field(
        2, ge=1,
        description="Checkpoints kept: the best by the early-stopping metric.",
    )
    max_failures: int = Field(
        1, ge=0,
        description="Worker failures Ray Train recovers from before giving up.",
    )
    # Ranker examples mined from the trained retriever (rayrec.seqrec.mining): the last
    # mine_positions steps of each train sequence whose positive is in the retriever's top
    # mine_candidates, with that list as candidates (what the ranker re-orders when served).
    mine_positions: int = Field(
        20, ge=1,
        description="Newest steps of each train sequence mined as ranker examples.",
    )
    mine_candidates: int = Field(
        10, ge=2,
        description="Retriever top-N that becomes each mined example's candidate list.",
    )
    run_name: str = Field("retriever", description="Name prefix of the Ray Train run (same config: resumed).")
    seed: int = Field(0, description="Random seed of training.")
    out: str | None = Field(None, description="Where the retriever is written; None: <run_dir>/retriever.")

    @property
    def stride(self) -> int:
        """The window stride in items (``window_stride`` with None resolved to max_len)."""
        return self.max_len if self.window_stride is None else self.window_stride
