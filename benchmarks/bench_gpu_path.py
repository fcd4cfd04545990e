"""rayrec's own model code on a CUDA device: correctness against CPU fp32, and ranker scoring speed.

Sections (each one runs on its own: a failure records its traceback and the next one runs):

1. ``ranker``: tiny random backbones (``make_tiny_backbone``: gpt2, llama, qwen2; a tiny BERT
   with an offline WordPiece tokenizer) for every ranker kind (cross_encoder with mean and cls
   pooling, causal_yesno, causal_listwise). A ranker with random LoRA weights is saved with
   ``save_ranker`` and loaded with ``load_ranker`` on CPU fp32 (the reference) and on the device
   at fp32 and bf16 (``precision: auto`` on CUDA); ``Ranker.score`` on the same lists, with
   priors: max abs score difference and top-k agreement, and batch composition (left padding)
   must not change fp32 scores. One LoRA training step (``train_scores``, ``ranking_loss``,
   backward, AdamW) on the device at fp32 (loss and gradient norm as on CPU) and bf16: finite
   loss and gradients, LoRA and prior weights moved.
2. ``seqrec``: ``SASRec`` + ``sequence_loss`` (full and sampled softmax) trained a few steps on
   the device on random sequences (loss falls); the loss on device vs CPU for the same weights;
   user vectors, catalog logits and their top-10 on device vs CPU; ``save_retriever`` /
   ``load_retriever`` of the device-trained model.
3. ``seqrec_loop_calls``: the calls the retriever's Ray Train loop makes with ``use_gpu``, as
   it makes them (shard tensors and step indices moved to the worker's device; ``retrieve_topn``
   / ``score_items`` on the device model, as in its validation).
4. ``generative``: ``generate_items`` (trie-constrained beam search, KV cache reordered) with
   a tiny Llama on device vs CPU: same items, same log-probabilities; bf16 lists valid;
   the tuning loss (``collate``, ``target_logits``, ``target_nll``) on device vs CPU.
5. ``speed``: random-init MiniLM-size BERT (6 x 384, cross_encoder) and SmolLM2-135M-size Llama
   (30 x 576, causal_yesno) built from configs (no download), scored through ``load_ranker`` ->
   ``Ranker.score`` (untuned LoRA, as served without a checkpoint): one request of 20 / 50
   candidates at max_length 64 / 128, fp32 and bf16, p50/p95 ms over --reps calls after
   warm-up (``torch.cuda.synchronize`` around each), the collation share (tokenising on CPU),
   and candidates/s of 8 requests (400 candidates) per call at each ``score_batch_size``;
   plus a CPU fp32 (and int8) baseline of the MiniLM-size model at 50 x 64 with
   --cpu-threads threads, in the same run.

    PYTHONPATH=platform python3 benchmarks/bench_gpu_path.py --device cuda --out gpu_path.json

CPU check of the script itself (device comparisons become CPU vs CPU, speed sizes shrink):

    PYTHONPATH=platform python benchmarks/bench_gpu_path.py --device cpu --quick --cpu-threads 1 \\
        --out /tmp/gpu_path_cpu.json

Needs torch, transformers, peft, tokenizers, safetensors, pydantic, numpy, pyarrow; no Ray,
FAISS, DeepSpeed, embedded models or network. Writes the JSON after every section; exits 1
when any section failed or raised.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import string
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

_WORDS = (
    "star war trek alien lord ring tower fellowship return king toy story heat night day dark "
    "knight rise fall city love life death house road river sea sky fire ice blood moon sun "
    "man woman girl boy child family friend ghost dream world time space ship war peace black "
    "white red blue green gold silver iron glass stone wild lost last first great little big "
    "secret hidden broken silent crazy happy sad strange perfect american french italian "
    "summer winter spring autumn morning evening island mountain forest desert garden "
    "street station hotel school prison hospital park bridge castle palace kingdom empire "
    "hunter killer runner rider dancer singer doctor captain soldier pirate wizard witch "
    "dragon tiger wolf bird horse dog cat fish shark snake monkey bear lion eagle"
)
WORDS = sorted(set(_WORDS.split()))  # title words: single tokens of the WordPiece vocabulary
TINY_FAMILIES = ("bert", "gpt2", "llama", "qwen2")
RANKER_CASES = [  # (family, kind, loss, pooling)
    ("bert", "cross_encoder", "bce", "mean"),
    ("bert", "cross_encoder", "mse", "cls"),
    ("gpt2", "causal_yesno", "bce", "mean"),
    ("gpt2", "causal_listwise", "listwise", "mean"),
    ("llama", "causal_yesno", "bce", "mean"),
    ("llama", "causal_listwise", "listwise", "mean"),
    ("qwen2", "causal_yesno", "mse", "mean"),
    ("qwen2", "causal_listwise", "listwise", "mean"),
]
# Tolerances against CPU fp32 (scores are O(1) logits / logit differences).
FP32_ATOL = 2e-3
BF16_ATOL = 0.15


class Context:
    """Run-wide state: arguments, the device, a temp dir and the tiny backbones built so far."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.device = torch.device(args.device)
        self.start = time.perf_counter()
        self._tiny: dict[str, str] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def left_s(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def tiny(self, family: str) -> str:
        """A tiny random backbone of ``family`` (built once per run)."""
        if family not in self._tiny:
            out = self.tmp / "tiny" / family
            if family == "bert":
                self._tiny[family] = make_bert_backbone(out, vocab_size=1000, layers=2, hidden=32,
                                                        heads=2, intermediate=64)
            else:
                from rayrec.models.tiny import make_tiny_backbone

                self._tiny[family] = make_tiny_backbone(family, out)
        return self._tiny[family]


# ---------------------------------------------------------------------------------------------
# Inputs and offline backbones


def wordpiece_tokenizer(vocab_size: int):
    """A BERT-style uncased WordPiece tokenizer ([CLS] a [SEP] b [SEP], token types, [PAD]),
    built offline: the words of WORDS are single tokens, anything else falls back to
    characters; the vocabulary is filled with [unused] entries up to ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = specials + chars + ["##" + c for c in chars] + WORDS
    vocab_list += [f"[unused{i}]" for i in range(max(0, vocab_size - len(vocab_list)))]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def make_bert_backbone(out: Path, vocab_size: int, layers: int, hidden: int, heads: int,
                       intermediate: int) -> str:
    """A random BertModel + offline WordPiece tokenizer saved to ``out`` (a local backbone path)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = wordpiece_tokenizer(vocab_size)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def make_llama_backbone(out: Path, tokenizer_dir: str, layers: int, hidden: int, heads: int,
                        kv_heads: int, intermediate: int, vocab_size: int) -> str:
    """A random LlamaForCausalLM (tied embeddings) saved to ``out`` with ``tokenizer_dir``'s tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def titles(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))).title()
            + f" ({rng.randint(1950, 2024)})" for _ in range(n)]


def history_text(rng: random.Random, n_items: int) -> str:
    return " | ".join(titles(rng, n_items))


def requests(seed: int, sizes: list[int], history_items: list[int]):
    """(histories, candidate lists, priors (n, 2) per list: popularity, retrieval)."""
    rng = random.Random(seed)
    hist = [history_text(rng, h) for h in history_items]
    cands = [titles(rng, n) for n in sizes]
    prng = np.random.default_rng(seed)
    priors = [prng.normal(size=(n, 2)).astype(np.float32) for n in sizes]
    return hist, cands, priors


# ---------------------------------------------------------------------------------------------
# Comparison helpers


def topk_agreement(ref: list[np.ndarray], got: list[np.ndarray], k: int) -> dict:
    """Mean overlap of each list's top-k sets, and the share of lists with the same top-k order."""
    overlap, same = [], []
    for a, b in zip(ref, got, strict=True):
        kk = min(k, len(a))
        ta, tb = np.argsort(-a, kind="stable")[:kk], np.argsort(-b, kind="stable")[:kk]
        overlap.append(len(set(ta.tolist()) & set(tb.tolist())) / kk)
        same.append(bool(np.array_equal(ta, tb)))
    return {"k": k, "overlap": round(float(np.mean(overlap)), 4), "same_order": round(float(np.mean(same)), 4)}


def max_abs(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
                     for a, b in zip(ref, got, strict=True)))


def finite(xs) -> bool:
    return all(bool(np.isfinite(np.asarray(x, dtype=np.float64)).all()) for x in xs)


class Checks:
    """Named pass/fail checks of one section (a failed check fails the section)."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, name: str, ok: bool, **detail) -> bool:
        self.items.append({"check": name, "ok": bool(ok), **detail})
        return bool(ok)

    def failed(self) -> list[str]:
        return [c["check"] for c in self.items if not c["ok"]]


def _err(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}"[:600], "traceback": traceback.format_exc()[-3000:]}


# ---------------------------------------------------------------------------------------------
# 1. Ranker correctness


def _perturb(model, seed: int) -> None:
    """Random LoRA B (LoRA starts as a no-op) and prior weights, so every path counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        if model.prior_weight is not None:
            model.prior_weight.copy_(torch.randn(model.prior_weight.shape, generator=g) * 0.1)


def _train_step(cfg, device: torch.device, hist, cands, priors, bf16: bool = False) -> dict:
    """One LoRA step as the training loop takes it (without DeepSpeed): loss, grads, movement."""
    from rayrec.models.losses import ranking_loss
    from rayrec.models.ranker import build_ranker, train_scores

    model, collator = build_ranker(cfg, seed=0)
    model = model.to(device, dtype=torch.bfloat16 if bf16 else torch.float32).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().float().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2)
    scores, mask, n_tok = train_scores(model, collator, hist, cands, random.Random(0), device, priors)
    labels = torch.zeros_like(scores, dtype=torch.float32)
    labels[:, 0] = 1.0
    loss = ranking_loss(cfg.loss, scores, labels, mask)
    loss.backward()
    grads = [p.grad.detach().float() for p in params.values() if p.grad is not None]
    grad_norm = float(torch.sqrt(sum((g**2).sum() for g in grads)).cpu())
    grads_finite = all(bool(torch.isfinite(g).all()) for g in grads)
    opt.step()
    moved = {n: float((p.detach().float() - before[n]).abs().max().cpu()) for n, p in params.items()}
    lora_b = [v for n, v in moved.items() if "lora_B" in n]
    return {
        "loss": float(loss.detach().cpu()), "grad_norm": grad_norm, "grads_finite": grads_finite,
        "n_trainable": len(params), "n_grads": len(grads), "tokens": n_tok,
        "lora_B_max_move": max(lora_b) if lora_b else 0.0,
        "lora_B_tensors_moved": sum(v > 0 for v in lora_b), "lora_B_tensors": len(lora_b),
        "prior_weight_move": moved.get("prior_weight", 0.0),
        "head_move": max([v for n, v in moved.items() if n.startswith("head.")], default=None),
    }


def _ranker_case(ctx: Context, family: str, kind: str, loss: str, pooling: str, checks: Checks) -> dict:
    from rayrec.models.config import ModelConfig
    from rayrec.models.ranker import build_ranker, load_ranker, save_ranker

    dev = ctx.device
    name = f"{family}/{kind}/{loss}" + (f"/{pooling}" if kind == "cross_encoder" else "")
    # Short candidates and a small listwise window: every prompt stays far below GPT-2's 512
    # learned positions (an index past them is a device-side assert that poisons the context).
    cfg = ModelConfig(backbone=ctx.tiny(family), kind=kind, loss=loss, pooling=pooling,
                      max_length=64, max_candidate_tokens=12, listwise_window=6,
                      lora={"r": 4, "dropout": 0.0}, precision="fp32", score_batch_size=16)
    hist, cands, priors = requests(1, [5, 9, 14], [2, 6, 30])  # the 30-item history is cut
    model, collator = build_ranker(cfg, seed=0)
    _perturb(model, seed=1)
    ckpt = save_ranker(ctx.tmp / "rankers" / name.replace("/", "_"), cfg, model, collator)

    ref = load_ranker(cfg, ckpt, "cpu")
    want = ref.score(hist, cands, priors)
    text_only = ref.score(hist, cands)
    out: dict = {"case": name, "ref_score_range": [float(min(a.min() for a in want)),
                                                   float(max(a.max() for a in want))],
                 "prior_effect_max": max_abs(want, text_only)}
    checks.add(f"{name}: cpu scores finite", finite(want))
    scale = max(1.0, float(max(np.abs(a).max() for a in want)))

    fp32 = load_ranker(cfg, ckpt, str(dev))
    got = fp32.score(hist, cands, priors)
    diff = max_abs(want, got)
    out["fp32"] = {"precision": fp32.precision, "max_abs_diff": diff,
                   "top3": topk_agreement(want, got, 3)}
    checks.add(f"{name}: {dev.type} fp32 == cpu fp32", finite(got) and diff <= FP32_ATOL * scale,
               max_abs_diff=diff, tol=FP32_ATOL * scale)
    # Batch composition (how much left/right padding a list gets) must not move its scores.
    alone = [fp32.score([h], [c], [p])[0] for h, c, p in zip(hist, cands, priors, strict=True)]
    pad_diff = max_abs(got, alone)
    out["fp32"]["batch_vs_alone_max_abs_diff"] = pad_diff
    checks.add(f"{name}: {dev.type} fp32 batch == alone", pad_diff <= FP32_ATOL * scale, max_abs_diff=pad_diff)
    del fp32

    prec = "auto" if dev.type == "cuda" else "bf16"
    bf16 = load_ranker(cfg.model_copy(update={"precision": prec}), ckpt, str(dev))
    got = bf16.score(hist, cands, priors)
    diff = max_abs(want, got)
    out["bf16"] = {"precision_config": prec, "precision": bf16.precision, "max_abs_diff": diff,
                   "top3": topk_agreement(want, got, 3), "top1": topk_agreement(want, got, 1)}
    checks.add(f"{name}: {dev.type} precision={prec} -> bf16", bf16.precision == "bf16",
               precision=bf16.precision)
    checks.add(f"{name}: {dev.type} bf16 ~ cpu fp32", finite(got) and diff <= BF16_ATOL * scale,
               max_abs_diff=diff, tol=BF16_ATOL * scale)
    del bf16

    train_cpu = _train_step(cfg, torch.device("cpu"), hist, cands, priors)
    train_dev = _train_step(cfg, dev, hist, cands, priors)
    out["train_step"] = {"cpu_fp32": train_cpu, f"{dev.type}_fp32": train_dev}
    loss_diff = abs(train_cpu["loss"] - train_dev["loss"])
    gn_rel = abs(train_cpu["grad_norm"] - train_dev["grad_norm"]) / max(train_cpu["grad_norm"], 1e-12)
    checks.add(f"{name}: {dev.type} fp32 train step finite, LoRA moved",
               math.isfinite(train_dev["loss"]) and train_dev["grads_finite"]
               and train_dev["lora_B_tensors_moved"] == train_dev["lora_B_tensors"] > 0
               and train_dev["prior_weight_move"] > 0)
    checks.add(f"{name}: {dev.type} fp32 train loss/grad == cpu", loss_diff <= 1e-4 and gn_rel <= 1e-3,
               loss_diff=loss_diff, grad_norm_rel_diff=gn_rel)
    try:
        train_bf16 = _train_step(cfg, dev, hist, cands, priors, bf16=True)
        out["train_step"][f"{dev.type}_bf16"] = train_bf16
        checks.add(f"{name}: {dev.type} bf16 train step finite, LoRA moved",
                   math.isfinite(train_bf16["loss"]) and train_bf16["grads_finite"]
                   and train_bf16["lora_B_tensors_moved"] > 0,
                   loss=train_bf16["loss"], loss_cpu_fp32=train_cpu["loss"])
    except Exception as e:
        out["train_step"][f"{dev.type}_bf16"] = _err(e)
        checks.add(f"{name}: {dev.type} bf16 train step", False, error=str(e)[:300])
    return out


def section_ranker(ctx: Context, checks: Checks) -> dict:
    cases = []
    for family, kind, loss, pooling in RANKER_CASES:
        try:
            cases.append(_ranker_case(ctx, family, kind, loss, pooling, checks))
        except Exception as e:
            cases.append({"case": f"{family}/{kind}/{loss}", **_err(e)})
            checks.add(f"{family}/{kind}/{loss}: ran", False, error=str(e)[:300])
    return {"cases": cases, "fp32_atol": FP32_ATOL, "bf16_atol": BF16_ATOL}


# ---------------------------------------------------------------------------------------------
# 2./3. SASRec retriever


def _seq_data(n_items: int, n_seqs: int, max_len: int, seed: int = 0):
    from rayrec.seqrec.data import training_tensors

    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, size=int(rng.integers(3, max_len + 10))) for _ in range(n_seqs)]
    inputs, targets = training_tensors(seqs, max_len, n_items)
    return seqs, inputs, targets


def section_seqrec(ctx: Context, checks: Checks) -> dict:
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.model import SASRec, load_retriever, save_retriever, sequence_loss

    dev = ctx.device
    n_items = 500
    rc = RetrieverConfig(max_len=32, dim=64, layers=2, heads=2, num_negatives=64)
    seqs, inputs, targets = _seq_data(n_items, 64, rc.max_len)
    out: dict = {"n_items": n_items, "sequences": len(seqs), "max_len": rc.max_len}
    trained = None
    for loss_kind in ("full", "sampled"):
        rcl = rc.model_copy(update={"loss": loss_kind})
        torch.manual_seed(0)
        cpu_net = SASRec(n_items, rcl).eval()
        net = SASRec(n_items, rcl)
        net.load_state_dict(cpu_net.state_dict())
        net = net.to(dev).eval()
        # The same weights and (CPU generator) negatives: the loss must agree across devices.
        l_cpu = float(sequence_loss(cpu_net, inputs, targets, rcl, torch.Generator().manual_seed(1)).detach())
        l_dev = float(sequence_loss(net, inputs.to(dev), targets.to(dev), rcl,
                                    torch.Generator().manual_seed(1)).detach().cpu())
        checks.add(f"{loss_kind}: loss {dev.type} == cpu", abs(l_cpu - l_dev) <= 1e-4 * max(1.0, l_cpu),
                   loss_cpu=l_cpu, loss_dev=l_dev)
        # A few steps on one batch in train mode (dropout on), as the loop's hot loop takes them.
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=rcl.lr, weight_decay=rcl.weight_decay)
        gen = torch.Generator().manual_seed(rcl.seed)
        x, y = inputs.to(dev), targets.to(dev)
        losses = []
        for _ in range(15):
            loss = sequence_loss(net, x, y, rcl, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach().cpu()))
        out[loss_kind] = {"loss_cpu": l_cpu, "loss_dev": l_dev, "train_losses": [round(v, 4) for v in losses]}
        checks.add(f"{loss_kind}: {dev.type} training loss finite and falling",
                   finite(losses) and losses[-1] < losses[0], first=losses[0], last=losses[-1])
        if loss_kind == "full":
            trained = net.eval()

    # The trained device model vs its CPU copy: user vectors, catalog logits, top-10.
    cpu_copy = SASRec(n_items, rc)
    cpu_copy.load_state_dict({k: v.cpu() for k, v in trained.state_dict().items()})
    cpu_copy.eval()
    with torch.no_grad():
        u_dev = trained.user_vectors(inputs.to(dev))
        u_cpu = cpu_copy.user_vectors(inputs)
        lg_dev = (u_dev @ trained.item_vectors()[:n_items].T).cpu().numpy()
        lg_cpu = (u_cpu @ cpu_copy.item_vectors()[:n_items].T).numpy()
    u_diff = float((u_dev.cpu() - u_cpu).abs().max())
    lg_diff = float(np.abs(lg_dev - lg_cpu).max())
    top = topk_agreement(list(lg_cpu), list(lg_dev), 10)
    out["scores"] = {"user_vector_max_abs_diff": u_diff, "logit_max_abs_diff": lg_diff, "top10": top}
    checks.add(f"{dev.type} user vectors/logits == cpu", u_diff <= 1e-3 and lg_diff <= 1e-3,
               user_vector_max_abs_diff=u_diff, logit_max_abs_diff=lg_diff)
    checks.add(f"{dev.type} top-10 == cpu", top["overlap"] >= 0.99, **top)

    # save_retriever from the device model (the loop saves ``net``), reload on CPU.
    saved = save_retriever(ctx.tmp / "retriever", trained, rc)
    loaded, meta = load_retriever(saved)
    with torch.no_grad():
        rt = float((loaded.user_vectors(inputs) - u_cpu).abs().max())
    out["save_load_user_vector_max_abs_diff"] = rt
    checks.add("save_retriever(device model) -> load_retriever (cpu) round trip", rt <= 1e-5,
               max_abs_diff=rt, n_items=meta.get("n_items"))
    return out


def section_seqrec_loop_calls(ctx: Context, checks: Checks) -> dict:
    """The retriever loop's calls with ``use_gpu``, as ``seqrec/loop.py`` makes them: the network
    on the device (``prepare_model``), the shard's ``training_tensors`` moved there once, each
    step's index moved too; ``validate(net, ...)`` runs ``retrieve_topn`` on the device model."""
    from rayrec.seqrec.config import RetrieverConfig
    from rayrec.seqrec.model import SASRec, sequence_loss
    from rayrec.seqrec.scorer import retrieve_topn, score_items

    dev = ctx.device
    n_items = 300
    rc = RetrieverConfig(max_len=16, dim=32, layers=1, heads=1, num_negatives=32)
    seqs, inputs, targets = _seq_data(n_items, 16, rc.max_len)
    inputs, targets = inputs.to(dev), targets.to(dev)
    torch.manual_seed(0)
    net = SASRec(n_items, rc).to(dev)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(seqs), generator=gen)[:8].to(dev)
    calls = {
        "loop step, full softmax (shard and index on the device)":
            lambda: sequence_loss(net, inputs[idx], targets[idx], rc, gen).backward(),
        "loop step, sampled softmax (negatives drawn on the CPU generator)":
            lambda: sequence_loss(net, inputs[idx], targets[idx],
                                  rc.model_copy(update={"loss": "sampled"}), gen).backward(),
        "validate: retrieve_topn(device model)": lambda: retrieve_topn(net, seqs[:4], 10),
        "score_items(device model)": lambda: score_items(net, seqs[:4], [[1, 2, 3]] * 4),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = {"ok": True}
            checks.add(name, True)
        except Exception as e:
            out[name] = {"ok": False, **_err(e)}
            checks.add(name, False, error=f"{type(e).__name__}: {e}"[:300])
    return out


# ---------------------------------------------------------------------------------------------
# 4. Generative


GEN_TITLES = [
    "Star Wars (1977)", "Star Wars: Episode II - Attack of the Clones (2002)",
    "Star Wars: Episode III - Revenge of the Sith (2005)", "Star Trek (2009)", "Alien (1979)",
    "Aliens (1986)", "Alien (1979)", "Toy Story (1995)", "Toy Story 2 (1999)",
    "The Lord of the Rings: The Fellowship of the Ring (2001)",
    "The Lord of the Rings: The Two Towers (2002)", "Heat (1995)", "Night Moon (1961)",
    "The Silent Garden (1988)", "Red River Road (2014)", "Winter Island (1972)",
]


def section_generative(ctx: Context, checks: Checks) -> dict:
    from rayrec.generative import prompts as gen_prompts
    from rayrec.generative.decode import generate_items
    from rayrec.generative.examples import collate, target_logits, target_nll, tokenize
    from rayrec.generative.trie import CatalogTrie
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = ctx.device
    path = ctx.tiny("llama")
    tok = AutoTokenizer.from_pretrained(path)
    cpu_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    dev_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(dev).eval()
    trie = CatalogTrie.from_titles(tok, GEN_TITLES)
    seen = [[0, 4], [], [7, 8, 9], [11]]
    reqs = ["something fun", None, "space adventure", "a heist"]
    batch = [gen_prompts.render(tok, [GEN_TITLES[i] for i in s], r) for s, r in zip(seen, reqs, strict=True)]
    out: dict = {"catalog": len(GEN_TITLES), "trie_max_depth": trie.max_depth, "runs": {}}

    def valid(lists) -> bool:
        return all(len(set(g.items.tolist())) == len(g.items) and not set(g.items.tolist()) & set(s)
                   and all(0 <= i < len(GEN_TITLES) for i in g.items.tolist())
                   and g.scores.tolist() == sorted(g.scores.tolist(), reverse=True)
                   for g, s in zip(lists, seen, strict=True))

    # decode reads the KV cache under transformers' name of the day (cache / past_key_values)
    generate_items(cpu_model, tok, trie, batch[:1], k=2, banned=seen[:1], num_beams=2)
    checks.add("generate_items runs on this transformers", True)
    for k, beams in ((5, 8), (8, len(GEN_TITLES))):
        ref = generate_items(cpu_model, tok, trie, batch, k=k, banned=seen, num_beams=beams)
        t0 = time.perf_counter()
        got = generate_items(dev_model, tok, trie, batch, k=k, banned=seen, num_beams=beams)
        ctx.sync()
        dt = time.perf_counter() - t0
        same = all(np.array_equal(a.items, b.items) for a, b in zip(ref, got, strict=True))
        sdiff = max(float(np.abs(a.scores - b.scores).max()) if len(a.scores) == len(b.scores) else math.inf
                    for a, b in zip(ref, got, strict=True))
        run = {"cpu_items": [g.items.tolist() for g in ref], "dev_items": [g.items.tolist() for g in got],
               "same_items": same, "score_max_abs_diff": sdiff, "dev_seconds": round(dt, 3),
               "forward_passes": [g.forward_passes for g in got]}
        out["runs"][f"k{k}_beams{beams}"] = run
        checks.add(f"k={k} beams={beams}: {dev.type} lists valid", valid(got))
        checks.add(f"k={k} beams={beams}: {dev.type} items == cpu", same and sdiff <= 5e-3,
                   score_max_abs_diff=sdiff)

    dev_bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(dev).eval()
    ref = generate_items(cpu_model, tok, trie, batch, k=5, banned=seen, num_beams=8)
    got = generate_items(dev_bf16, tok, trie, batch, k=5, banned=seen, num_beams=8)
    overlap = float(np.mean([len(set(a.items.tolist()) & set(b.items.tolist())) / max(len(a.items), 1)
                             for a, b in zip(ref, got, strict=True)]))
    out["bf16"] = {"dev_items": [g.items.tolist() for g in got], "overlap_with_cpu_fp32": overlap}
    checks.add(f"{dev.type} bf16 lists valid", valid(got), overlap_with_cpu_fp32=overlap)

    # The generator's tuning loss (teacher forcing on the title tokens) on device vs CPU.
    rows = [{"prompt": p, "target": gen_prompts.target(tok, GEN_TITLES[i])}
            for p, i in zip(batch, [3, 12, 5, 14], strict=True)]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tb = collate(tokenize(tok, rows), pad_id)
    nll_cpu, cnt = target_nll(target_logits(cpu_model, tb), tb.labels)
    dev_model.train()
    tbd = tb.to(dev)
    nll_dev, _ = target_nll(target_logits(dev_model, tbd), tbd.labels)
    loss = nll_dev.sum() / cnt.sum().to(dev)
    loss.backward()
    grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in dev_model.parameters() if p.grad is not None)
    nd = float((nll_cpu.detach() - nll_dev.detach().cpu()).abs().max())
    out["tuning_loss"] = {"nll_cpu": nll_cpu.detach().tolist(), "nll_dev": nll_dev.detach().cpu().tolist(),
                          "max_abs_diff": nd, "grads_finite": grads_ok}
    tol = 1e-4 * max(1.0, float(nll_cpu.detach().abs().max()))  # summed over a title's tokens
    checks.add(f"tuning loss {dev.type} == cpu, grads finite", nd <= tol and grads_ok, max_abs_diff=nd, tol=tol)
    return out


# ---------------------------------------------------------------------------------------------
# 5. Speed


def _pct(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3), "min_ms": round(float(a.min()), 3), "calls": len(a)}


def _timed(ctx: Context, fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    ctx.sync()
    ms = []
    for _ in range(reps):
        ctx.sync()
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def _speed_models(ctx: Context) -> dict[str, dict]:
    """The two realistic-size random backbones (smaller with --quick)."""
    q = ctx.args.quick
    root = ctx.tmp / "speed"
    t0 = time.perf_counter()
    bert = make_bert_backbone(root / "minilm_size", vocab_size=30522, layers=2 if q else 6,
                              hidden=128 if q else 384, heads=4 if q else 12,
                              intermediate=512 if q else 1536)
    t_bert = time.perf_counter() - t0
    t0 = time.perf_counter()
    llama = make_llama_backbone(root / "smollm2_135m_size", ctx.tiny("llama"),
                                layers=2 if q else 30, hidden=128 if q else 576, heads=4 if q else 9,
                                kv_heads=2 if q else 3, intermediate=256 if q else 1536, vocab_size=49152)
    t_llama = time.perf_counter() - t0
    return {
        "minilm_size_bert": {"path": bert, "kind": "cross_encoder", "build_s": round(t_bert, 2)},
        "smollm2_135m_size_llama": {"path": llama, "kind": "causal_yesno", "build_s": round(t_llama, 2)},
    }


def _ranker_at(base, cfg, device: str):
    """A Ranker around an already converted model, with ``cfg``'s collation and batching."""
    from rayrec.models.collate import RankerCollator
    from rayrec.models.ranker import Ranker

    collator = RankerCollator(base.collator.tok, cfg, base.collator.causal)
    return Ranker(base.model, collator, cfg, device)


def _measure(ctx: Context, name: str, spec: dict, device: str, precision: str, lengths, n_cands,
             batch_sizes, reps: int, warmup: int) -> tuple[list[dict], list[dict]]:
    from rayrec.models.config import ModelConfig
    from rayrec.models.ranker import load_ranker

    cfg0 = ModelConfig(backbone=spec["path"], kind=spec["kind"], precision=precision)
    t0 = time.perf_counter()
    base = load_ranker(cfg0, None, device)  # untuned backbone + fresh (unmerged) LoRA, as served
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in base.model.parameters())
    latency, throughput = [], []
    for length in lengths:
        for n in n_cands:
            if ctx.left_s() < 0:
                latency.append({"model": name, "device": device, "precision": precision,
                                "max_length": length, "candidates": n, "skipped": "time budget"})
                continue
            cfg = cfg0.model_copy(update={"max_length": length})
            ranker = _ranker_at(base, cfg, device)
            reqs = [requests(100 + i, [n], [30]) for i in range(8)]
            it = iter(range(10**9))

            def one(ranker=ranker, reqs=reqs, it=it):
                h, c, p = reqs[next(it) % len(reqs)]
                return ranker.score(h, c, p)

            ms = _timed(ctx, one, warmup, reps)
            h, c, p = reqs[0]
            enc = ranker.collator.encode(ranker.collator.plan(h, c, candidate_priors=p))
            toks = enc["attention_mask"].sum(1).float()
            coll = _timed(ctx, lambda r=ranker, h=h, c=c, p=p:
                          r.collator.encode(r.collator.plan(h, c, candidate_priors=p)), 1, max(3, reps // 3))
            latency.append({
                "model": name, "device": device, "precision": ranker.precision, "max_length": length,
                "candidates": n, "seq_width": int(enc["input_ids"].shape[1]),
                "tokens_per_seq_mean": round(float(toks.mean()), 1), **_pct(ms),
                "collate_p50_ms": _pct(coll)["p50_ms"],
                "candidates_per_s_at_p50": round(n / (_pct(ms)["p50_ms"] / 1000), 1),
            })
        if ctx.left_s() < 0 or not batch_sizes:
            continue
        # Throughput: 8 requests x 50 candidates per call (2 with --quick), per score_batch_size.
        n_req = 2 if ctx.args.quick else 8
        reqs = requests(200, [50] * n_req, [30] * n_req)
        per_bs = {}
        for bs in batch_sizes:
            if ctx.left_s() < 0:
                break
            ranker = _ranker_at(base, cfg0.model_copy(update={"max_length": length, "score_batch_size": bs}),
                                device)
            ms = _timed(ctx, lambda r=ranker, q=reqs: r.score(*q), 1, max(1, reps // 10))
            per_bs[bs] = round(50 * n_req / (float(np.median(ms)) / 1000), 1)
        if per_bs:
            best = max(per_bs, key=per_bs.get)
            throughput.append({"model": name, "device": device, "precision": base.precision,
                               "max_length": length, "candidates_per_call": 50 * n_req,
                               "candidates_per_s_by_batch_size": per_bs, "best_batch_size": best,
                               "best_candidates_per_s": per_bs[best]})
    for row in latency + throughput:
        row.setdefault("load_s", round(load_s, 2))
        row.setdefault("params", params)
    del base
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return latency, throughput


def section_speed(ctx: Context, checks: Checks) -> dict:
    q, dev = ctx.args.quick, ctx.device
    reps = ctx.args.reps or (3 if q else 30)
    warmup = 1 if q else 5
    lengths = [64] if q else [64, 128]
    n_cands = [50] if q else [20, 50]
    batch_sizes = [64] if q else [32, 64, 128, 256, 400]
    models = _speed_models(ctx)
    out: dict = {"models": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in models.items()},
                 "reps": reps, "warmup": warmup, "latency": [], "throughput": [], "cpu_baseline": []}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # CPU baseline first (the model is converted in place by each Ranker, so one load each).
    bert = models["minilm_size_bert"]
    for prec in ("fp32", "int8"):
        try:
            lat, _ = _measure(ctx, "minilm_size_bert", bert, "cpu", prec, [64], [50], [], reps, warmup)
            for row in lat:
                row["threads"] = torch.get_num_threads()
            out["cpu_baseline"] += lat
        except Exception as e:
            out["cpu_baseline"].append({"precision": prec, **_err(e)})
            checks.add(f"cpu baseline {prec}", False, error=str(e)[:300])
    for name, spec in models.items():
        for prec in ("fp32", "bf16"):
            try:
                lat, thr = _measure(ctx, name, spec, str(dev), prec, lengths, n_cands, batch_sizes, reps, warmup)
                out["latency"] += lat
                out["throughput"] += thr
                for row in lat:
                    if "p50_ms" in row:
                        checks.add(f"{name} {prec} {row['candidates']}x{row['max_length']} timed", True)
            except Exception as e:
                out["latency"].append({"model": name, "precision": prec, **_err(e)})
                checks.add(f"{name} {prec} timed", False, error=str(e)[:300])
    if dev.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    ratios = {}
    cpu = {r["precision"]: r for r in out["cpu_baseline"] if "p50_ms" in r}
    for row in out["latency"]:
        if (row.get("model") == "minilm_size_bert" and row.get("max_length") == 64
                and row.get("candidates") == 50 and "p50_ms" in row):
            for cp, c in cpu.items():
                ratios[f"cpu_{cp}_over_{dev.type}_{row['precision']}_p50"] = round(c["p50_ms"] / row["p50_ms"], 2)
    out["minilm_50x64_speedup"] = ratios
    return out


# ---------------------------------------------------------------------------------------------
# Driver


SECTIONS = {
    "ranker": section_ranker,
    "seqrec": section_seqrec,
    "seqrec_loop_calls": section_seqrec_loop_calls,
    "generative": section_generative,
    "speed": section_speed,
}


def environment(ctx: Context) -> dict:
    import peft
    import transformers

    env = {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "device": str(ctx.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "quick": ctx.args.quick,
    }
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        env |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda, "capability": list(torch.cuda.get_device_capability(ctx.device)),
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "bf16_supported": torch.cuda.is_bf16_supported()}
    return env


def _line(name: str, rec: dict) -> str:
    status = rec["status"].upper()
    head = f"[{status:6s}] {name:18s} {rec['seconds']:6.1f}s"
    if rec.get("error"):
        return head + f"  {rec['error']}"
    failed = rec.get("failed_checks") or []
    n = len(rec.get("checks") or [])
    return head + f"  {n - len(failed)}/{n} checks" + (f"; failed: {'; '.join(failed[:6])}" if failed else "")


def summary(report: dict) -> list[str]:
    lines = [f"device {report['environment'].get('gpu', report['environment']['device'])}, "
             f"torch {report['environment']['torch']}, transformers {report['environment']['transformers']}"]
    for name, rec in report["sections"].items():
        lines.append(_line(name, rec))
        res = rec.get("result") or {}
        if name == "ranker":
            for c in res.get("cases", []):
                if "fp32" in c:
                    lines.append(f"    {c['case']:34s} fp32 diff {c['fp32']['max_abs_diff']:.1e}  "
                                 f"bf16 diff {c['bf16']['max_abs_diff']:.3f} top3 {c['bf16']['top3']['overlap']:.2f}")
        for c in rec.get("checks") or []:
            if not c["ok"]:
                detail = {k: v for k, v in c.items() if k not in ("check", "ok")}
                lines.append(f"    FAILED {c['check']}: {json.dumps(detail, default=str)[:220]}")
        if name == "speed":
            for row in res.get("cpu_baseline", []) + res.get("latency", []):
                if "p50_ms" in row:
                    lines.append(f"    {row['model']:24s} {row['device']:5s} {row['precision']:5s} "
                                 f"{row['candidates']:3d}x{row['max_length']:<4d} p50 {row['p50_ms']:8.2f} ms  "
                                 f"p95 {row['p95_ms']:8.2f} ms  (collate {row['collate_p50_ms']:.1f} ms, "
                                 f"{row['tokens_per_seq_mean']:.0f} tok/seq)")
            for row in res.get("throughput", []):
                lines.append(f"    {row['model']:24s} {row['precision']:5s} L={row['max_length']:<4d} "
                             f"best {row['best_candidates_per_s']:.0f} cand/s at batch {row['best_batch_size']}")
            if res.get("minilm_50x64_speedup"):
                lines.append(f"    minilm 50x64 speedup: {res['minilm_50x64_speedup']}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="small speed models, few repetitions")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads (the CPU reference and the CPU baseline)")
    ap.add_argument("--reps", type=int, default=0, help="timed calls per speed setting (default 30, 3 quick)")
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="speed settings after this many seconds of the run are skipped")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {list(SECTIONS)}")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
    torch.set_num_threads(args.cpu_threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-load weight bars would bury the log
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_path_") as tmp:
        ctx = Context(args, Path(tmp))
        try:
            env = environment(ctx)
        except Exception as e:  # a missing device is recorded; each section then fails on its own
            env = {"device": args.device, "torch": torch.__version__, "transformers": "?", **_err(e)}
        report: dict = {"environment": env, "sections": {}}
        for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
            checks = Checks()
            t0 = time.perf_counter()
            rec: dict = {"status": "ok"}
            try:
                rec["result"] = SECTIONS[name](ctx, checks)
            except Exception as e:
                rec |= {"status": "error", **_err(e)}
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            rec["checks"], rec["failed_checks"] = checks.items, checks.failed()
            if rec["status"] == "ok" and rec["failed_checks"]:
                rec["status"] = "failed"
            report["sections"][name] = rec
            print(_line(name, rec), flush=True)
            if rec.get("traceback"):
                print(rec["traceback"], flush=True)
            report["seconds"] = round(time.perf_counter() - ctx.start, 2)
            report["failed_sections"] = [n for n, r in report["sections"].items() if r["status"] != "ok"]
            out_path.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(["", "summary:", *summary(report), f"total {report['seconds']:.1f}s -> {out_path}"]))
    return 1 if report["failed_sections"] else 0


if __name__ == "__main__":
    sys.exit(main())
