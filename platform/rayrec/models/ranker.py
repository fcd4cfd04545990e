"""The ranker: one module and one scoring path for training, offline evaluation and serving."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from rayrec.models.backbone import (
    backbone_family,
    default_lora_targets,
    is_causal_family,
    resolve_backbone,
)
from rayrec.models.collate import RankerCollator, SeqPlan, scatter_scores
from rayrec.models.config import ModelConfig
from rayrec.models.embedded import EMBEDDED
from rayrec.models.kinds import kind_of
from rayrec.models.prior import prior_names
from rayrec.storage import local_copy

log = logging.getLogger(__name__)

ARTIFACT_FILE = "ranker.json"  # marks a saved ranker directory
HEAD_FILE = "head.safetensors"  # the scoring head and prior weight (not part of the backbone)
# Adam moves a parameter by about lr per step whatever its gradient, so the prior weight is
# stored divided by PRIOR_GAIN: it then learns PRIOR_GAIN times faster than LoRA and head, a
# per-parameter learning rate that survives DeepSpeed's one schedule for all parameters.
PRIOR_GAIN = 10.0


class RankerModel(nn.Module):
    """Backbone (+ LoRA) and the scoring head; ``forward`` returns (S, W) scores per sequence.

    cross_encoder: W=1, linear head on the pooled encoder output. causal_yesno: W=1,
    logit(' Yes') - logit(' No') at the last position. causal_listwise: W=window, the
    logits of the index tokens at the last position. With priors (``popularity_prior``,
    ``retrieval_prior``), learned weights w (initially 1 and 0) times each candidate's priors
    (``prior``, (S, W, F) or (S, W) for one) are added: score = text + sum_f w_f prior_f.
    """

    def __init__(self, backbone: nn.Module, cfg: ModelConfig, answer_ids: list[int], hidden: int):
        super().__init__()
        self.backbone, self.kind, self.pooling = backbone, cfg.kind, cfg.pooling
        self.spec = kind_of(cfg)
        self.head = None if self.spec.causal else nn.Linear(hidden, 1)
        # Popularity starts at weight 1 (a strong re-ranker on its own); the retrieval prior at 0,
        # so a ranker trained on examples without retriever scores ignores them when served.
        self.prior_names = prior_names(cfg)
        init = [float(n == "popularity") for n in self.prior_names]
        self.prior_weight = nn.Parameter(torch.tensor(init) / PRIOR_GAIN) if init else None
        self.register_buffer("answer_ids", torch.tensor(answer_ids, dtype=torch.long), persistent=False)

    def start_from_retrieval(self) -> None:
        """Start as the retriever's own order: retrieval prior weight 1, popularity 0 (the
        retriever already scores it), and a zero cross-encoder head, so the text score starts
        at 0. Training on the retriever's mined lists then learns what text adds to that order
        instead of first having to unlearn a popularity ranking."""
        if "retrieval" not in self.prior_names:
            return
        with torch.no_grad():
            self.prior_weight.copy_(torch.tensor([float(n == "retrieval") for n in self.prior_names]) / PRIOR_GAIN)
            if self.head is not None:
                self.head.weight.zero_()
                self.head.bias.zero_()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        prior: torch.Tensor | None = None, **kw,
    ) -> torch.Tensor:
        scores = self._text_scores(input_ids, attention_mask, **kw)
        if self.prior_weight is not None and prior is not None:
            prior = prior.to(scores.dtype)
            prior = prior.unsqueeze(-1) if prior.dim() == 2 else prior  # (S, W) -> (S, W, 1)
            # Fewer priors than weights (popularity only): the missing ones read 0.
            prior = F.pad(prior, (0, self.prior_weight.numel() - prior.shape[-1]))
            scores = scores + prior @ (PRIOR_GAIN * self.prior_weight).to(scores.dtype)
        return scores

    def _text_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        if not self.spec.causal:
            h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
            if self.pooling == "cls":
                pooled = h[:, 0]
            else:
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(pooled.to(self.head.weight.dtype))
        # Left-padded: the last position is the answer slot for every row.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            logits_to_keep=1,
        ).logits[:, -1]
        return self.spec.score(logits[:, self.answer_ids].float())


def build_ranker(
    cfg: ModelConfig, seed: int = 0, backbone_dir: str | None = None,
    tokenizer_dir: str | None = None,
) -> tuple[RankerModel, RankerCollator]:
    """A fresh ranker (untuned backbone + new LoRA + new head) and its collator."""
    path = backbone_dir or resolve_backbone(cfg.backbone)
    family = backbone_family(path)
    causal = is_causal_family(family)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or path)
    collator = RankerCollator(tokenizer, cfg, causal)
    loader = AutoModelForCausalLM if causal else AutoModel
    config = AutoConfig.from_pretrained(path)
    if not cfg.backbone_dropout:
        _disable_dropout(config)
    backbone = loader.from_pretrained(path, config=config, dtype=torch.float32)
    hidden = backbone.config.hidden_size
    torch.manual_seed(seed)
    if cfg.lora.enabled:
        lora = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules or default_lora_targets(family),
            fan_in_fan_out=family == "gpt2",  # GPT-2 stores attention weights as Conv1D
        )
        backbone = get_peft_model(backbone, lora)
    answer_ids = collator.answer_ids if causal else []
    return RankerModel(backbone, cfg, answer_ids, hidden), collator


def _disable_dropout(config) -> None:
    """Zero every dropout probability of a transformers config (any family's naming)."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, 0.0)


def trainable_state(model: RankerModel) -> dict[str, torch.Tensor]:
    """The parameters training changes (LoRA + head, or everything without LoRA), on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_ranker(
    out_dir: str | Path,
    cfg: ModelConfig,
    model: RankerModel,
    collator: RankerCollator,
    state: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write a loadable ranker: ranker.json, adapter/ (peft) or backbone/, head, tokenizer/.

    ``state`` is the gathered trainable state (needed under ZeRO-3, where parameters are
    partitioned); by default it is read from ``model``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else trainable_state(model)
    bb = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if isinstance(model.backbone, PeftModel):
        model.backbone.save_pretrained(out / "adapter", state_dict=bb)
        fmt = "adapter"
    else:
        model.backbone.save_pretrained(out / "backbone", state_dict=bb or None)
        fmt = "full"
    head = {k: v.contiguous() for k, v in state.items() if not k.startswith("backbone.")}
    if head:
        save_file(head, str(out / HEAD_FILE))
    collator.tok.save_pretrained(out / "tokenizer")
    meta = {"format": fmt, "model_config": cfg.model_dump(mode="json")}
    (out / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2))
    return str(out)


def warm_start(model: RankerModel, checkpoint: str | Path) -> None:
    """Load a saved ranker's LoRA adapter and head into a freshly built ``model`` (same backbone
    and LoRA shape): fine-tuning continues from that adapter instead of a new one."""
    art = _artifact_dir(checkpoint)
    if (art / "adapter").is_dir():
        result = set_peft_model_state_dict(model.backbone, load_peft_weights(str(art / "adapter")))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"adapter at {art} does not fit this ranker: {unexpected[:5]}")
    _load_head(model, art)


def _load_head(model: RankerModel, art: Path) -> None:
    """Load the saved head and prior weight (names as in ``model``) into ``model``."""
    if not (art / HEAD_FILE).is_file():
        return
    saved = {k if k.startswith(("head.", "prior_weight")) else f"head.{k}": v  # older: no prefix
             for k, v in load_file(str(art / HEAD_FILE)).items()}
    own = {n: p for n, p in model.named_parameters() if not n.startswith("backbone.")}
    if set(saved) != set(own):
        raise ValueError(
            f"head at {art} holds {sorted(saved)} but this ranker has {sorted(own)} "
            "(model.popularity_prior and model.kind must match the saved ranker)"
        )
    with torch.no_grad():
        for name, value in saved.items():
            own[name].copy_(value)


def _artifact_dir(checkpoint: str | Path) -> Path:
    p = Path(local_copy(str(checkpoint)))  # a remote checkpoint is downloaded once
    for cand in (p, p / "model"):
        if (cand / ARTIFACT_FILE).is_file():
            return cand
    raise FileNotFoundError(f"no ranker artifact ({ARTIFACT_FILE}) in {p} or {p / 'model'}")


def load_ranker(
    model_cfg: ModelConfig, checkpoint: str | None, device: str = "cpu"
) -> Ranker:
    """A ready scorer: ``checkpoint`` None = untuned backbone + fresh LoRA; else a saved ranker
    (a training checkpoint directory, its ``model/`` folder, or an exported artifact)."""
    if checkpoint is None:
        model, collator = build_ranker(model_cfg)
        return Ranker(model, collator, model_cfg, device)
    art = _artifact_dir(checkpoint)
    meta = json.loads((art / ARTIFACT_FILE).read_text())
    saved = ModelConfig.model_validate(meta["model_config"])
    if saved.kind != model_cfg.kind or saved.backbone != model_cfg.backbone:
        log.warning("checkpoint ranker (%s, %s) differs from config; using the checkpoint's",
                    saved.kind, saved.backbone)
    # Inference-time knobs come from the caller's config (batching, arithmetic, the token budget
    # per scored sequence: a ranker trained at 96 tokens may serve at 64); the structure from
    # the checkpoint.
    cfg = saved.model_copy(update={"score_batch_size": model_cfg.score_batch_size,
                                   "precision": model_cfg.precision, "max_length": model_cfg.max_length})
    if meta["format"] in ("full", "merged"):
        model, collator = build_ranker(
            cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})}),
            backbone_dir=str(art / "backbone"), tokenizer_dir=str(art / "tokenizer"),
        )
    else:
        no_lora = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})})
        model, collator = build_ranker(no_lora, tokenizer_dir=str(art / "tokenizer"))
        model.backbone = PeftModel.from_pretrained(model.backbone, str(art / "adapter"))
    _load_head(model, art)
    return Ranker(model, collator, cfg, device)


def resolve_precision(precision: str, device: torch.device, backbone: str | None = None) -> str:
    """``model.precision`` on ``device``. auto: the fastest path measured within 0.002 NDCG@10 of
    fp32 on the full catalog (ml-latest-small, README): bf16 on a GPU; on a CPU dynamic int8 for
    the embedded backbones it was measured on (MiniLM: 2.2x fp32's speed, NDCG@10 +0.0002, CI
    [-0.0002, +0.0007]), fp32 for any other backbone (unmeasured: int8 can move a small or
    unusual model's scores a lot)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return "int8" if backbone in EMBEDDED else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ValueError("model.precision=int8 is the CPU path (dynamic int8 kernels); on GPU use "
                         "bf16 or auto")
    return precision


def for_inference(model: RankerModel, precision: str, device: torch.device) -> RankerModel:
    """``model`` on ``device`` in eval mode at ``precision`` (fp32, bf16 or int8: resolved by
    :func:`resolve_precision`).

    int8: merge the LoRA adapter (W + BA, exact up to float rounding) so each layer is one
    matmul again, then ``quantize_dynamic`` swaps every backbone ``nn.Linear`` for an int8 one:
    weights quantised per tensor once, activations per batch at run time. The head and the
    prior weights stay fp32 (a handful of parameters, and the scores' last step).
    """
    if precision == "int8":
        model = model.eval()
        if isinstance(model.backbone, PeftModel):
            model.backbone = model.backbone.merge_and_unload()
        with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated for torchao
            warnings.simplefilter("ignore")
            model.backbone = torch.ao.quantization.quantize_dynamic(
                model.backbone, {nn.Linear}, dtype=torch.qint8)
        return model
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return model.to(device, dtype=dtype).eval()


@torch.no_grad()
def score_lists(
    model: nn.Module,
    collator: RankerCollator,
    history_texts: Sequence[str],
    candidate_texts: Sequence[Sequence[str]],
    batch_size: int,
    device: torch.device | str = "cpu",
    candidate_priors: Sequence[Sequence[float]] | None = None,
) -> list[np.ndarray]:
    """Score every candidate list (no grad, batched by sequences). The one scoring path."""
    seqs: list[SeqPlan] = collator.plan(history_texts, candidate_texts, candidate_priors=candidate_priors)
    out = [np.full(len(c), np.nan, dtype=np.float32) for c in candidate_texts]
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s : s + batch_size]
        batch = {k: v.to(device) for k, v in collator.encode(chunk).items()}
        res = model(**batch).float().cpu().numpy()
        for seq, row in zip(chunk, res, strict=True):
            out[seq.example][list(seq.positions)] = row[: len(seq.positions)]
    return out


def train_scores(
    model: nn.Module, collator: RankerCollator, history_texts, candidate_texts, rng, device,
    candidate_priors: Sequence[Sequence[float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Differentiable (B, C) scores, their mask and the number of real tokens for a training
    batch (same collation and forward as scoring)."""
    seqs = collator.plan(history_texts, candidate_texts, rng=rng, candidate_priors=candidate_priors)
    batch = {k: v.to(device) for k, v in collator.encode(seqs).items()}
    n_cols = max(len(c) for c in candidate_texts)
    scores, mask = scatter_scores(model(**batch), seqs, len(candidate_texts), n_cols)
    return scores, mask, int(batch["attention_mask"].sum())


class Ranker:
    """Batched no-grad scorer around a RankerModel (offline evaluation, serving, validation).

    ``cfg.precision`` picks the arithmetic (:func:`for_inference`); the model it wraps is not
    trained further (use the RankerModel for that).
    """

    def __init__(self, model: RankerModel, collator: RankerCollator, cfg: ModelConfig, device: str):
        self.device = torch.device(device)
        self.precision = resolve_precision(cfg.precision, self.device, cfg.backbone)
        self.model = for_inference(model, self.precision, self.device)
        self.collator, self.cfg = collator, cfg

    @property
    def tokenizer(self):
        return self.collator.tok

    @property
    def prior_weights(self) -> np.ndarray | None:
        """The learned weight of each prior (``rayrec.models.prior.prior_names`` order)."""
        w = self.model.prior_weight
        return None if w is None else PRIOR_GAIN * w.detach().float().cpu().numpy()

    @property
    def prior_weight(self) -> float | None:
        """The learned weight of the popularity prior; None when the ranker has none."""
        w = self.prior_weights
        return None if w is None or not self.cfg.popularity_prior else float(w[0])

    def score(
        self, history_texts: list[str], candidate_texts: list[list[str]],
        candidate_priors: Sequence[Sequence[float]] | None = None,
    ) -> list[np.ndarray]:
        """One float32 score array per history, aligned with its candidate list.

        ``candidate_priors``: each candidate's priors, (n,) or (n, F) per list
        (:func:`rayrec.models.prior.ranker_priors`); without them the prior term is left out
        (text-only scores).
        """
        return score_lists(
            self.model, self.collator, history_texts, candidate_texts,
            self.cfg.score_batch_size, self.device, candidate_priors,
        )
