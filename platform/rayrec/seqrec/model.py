"""SASRec: causal self-attention over a user's recent items (Kang & McAuley, ICDM 2018).

    h_t   = Transformer(e_{i_1} + p_1, ..., e_{i_t} + p_t)[t]     (pre-norm blocks, causal)
    s(i)  = <h_t, v_i>,   v_i = e_i                                    (ID-only)
                          v_i = W x_i + m_i clip(e_i)                  (text_init)

With ``text_init`` the model is text-grounded: x_i is the item's frozen text embedding, m_i = 1
for an item with a training interaction and 0 for one without (a new item's vector is its text
alone; its untrained e_i is never read), clip bounds the ID part's norm (``id_max_norm``), and
during training each item's ID part is dropped with probability ``id_dropout`` (DropoutNet,
Volkovs et al., NeurIPS 2017), so that W learns to place an item from its text alone, as it
must for a new one. Items without a training interaction are left out of the training softmax:
they did not exist yet, and pushing their text down would teach the model that new is bad.
With ``text_query`` the user state also reads the history's text, h_t + U q_t, q_t the unit-norm
recency-weighted mean of the text vectors read so far (the text index's history query; U starts
at 0): the score of an item then includes a learned text-to-text similarity U^T W, which is what
a new item can be found by.

Input and output item embeddings are shared (v_i scores the next item; e_i reads the history),
so a user vector ``h_t`` and the item vectors ``v`` live in one space and a FAISS inner-product
index over ``v`` returns the model's own top-N. Trained with softmax cross-entropy over the
catalog (Klenitskiy & Vasilev, RecSys 2023: CE, not SASRec's original one-negative BCE, is what
makes it competitive) or sampled softmax.

Sequences are left-padded with ``pad = n_items`` to ``max_len``: the last column is always the
newest item and position embeddings count from the right, whatever the history's length.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayrec import storage
from rayrec.seqrec.config import RetrieverConfig

MODEL_FILE, META_FILE = "retriever.pt", "retriever.json"


class Block(nn.Module):
    """Pre-norm self-attention + feed-forward, residual around each."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"retriever.dim ({dim}) must be divisible by retriever.heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(c, dim=2))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    """The retriever network. ``forward(seqs)`` -> (B, T, dim) hidden states."""

    def __init__(self, n_items: int, cfg: RetrieverConfig, text_vectors: np.ndarray | None = None,
                 trained: np.ndarray | None = None):
        super().__init__()
        self.id_dropout, self.id_max_norm = cfg.id_dropout, cfg.id_max_norm
        self.n_items, self.pad, self.max_len = n_items, n_items, cfg.max_len
        self.item = nn.Embedding(n_items + 1, cfg.dim, padding_idx=n_items)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        # std dim^-1/2: initial logits <h, v> are O(1), so the first softmax is near uniform.
        nn.init.normal_(self.item.weight, std=cfg.dim**-0.5)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[n_items].zero_()
        self.text_proj = None
        if cfg.text_init:
            if text_vectors is None or len(text_vectors) != n_items:
                raise ValueError("retriever.text_init needs one text vector per catalog item")
            self.register_buffer("text", torch.as_tensor(np.asarray(text_vectors, np.float32)))
            self.text_proj = nn.Linear(self.text.shape[1], cfg.dim, bias=False)
            # which items had a training interaction (default: all): the rest are text only
            seen = np.ones(n_items, bool) if trained is None else np.asarray(trained, bool)
            if len(seen) != n_items:
                raise ValueError("retriever: one trained flag per catalog item")
            self.register_buffer("trained", torch.as_tensor(seen))
            self.register_buffer("new_vectors", None)  # set_new_item_vectors; saved with the model
        # text_query: the user state also reads what the history's text says (seqrec.model doc)
        self.text_query, self.query_decay = None, cfg.text_query_decay
        if cfg.text_init and cfg.text_query:
            self.text_query = nn.Linear(self.text.shape[1], cfg.dim, bias=False)
            nn.init.zeros_(self.text_query.weight)  # starts as plain SASRec
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, dim): every item's vector, the padding row last (always zero input).

        Text-grounded, in eval mode without gradients (scoring, serving), the vectors are
        computed once (n_items x text_dim x dim multiply-adds: ~0.24 GFLOP on ml-latest-small)
        and reused until a weight, a buffer or the new-item vectors change."""
        v = self.item.weight
        if self.text_proj is None:
            return v
        if self.training or torch.is_grad_enabled():
            return self._item_vectors()
        key = (v._version, v.data_ptr(), self.text_proj.weight._version, self.text_proj.weight.data_ptr(),
               self.text._version, self.trained._version,
               None if self.new_vectors is None else (self.new_vectors.data_ptr(), self.new_vectors._version))
        cached = getattr(self, "_vectors_cache", None)
        if cached is None or cached[0] != key:
            self._vectors_cache = cached = (key, self._item_vectors())
        return cached[1]

    def _item_vectors(self) -> torch.Tensor:
        v = self.item.weight
        e = v[: self.n_items]
        if self.id_max_norm is not None:  # ||e_i|| <= id_max_norm (differentiable rescale)
            e = e * (self.id_max_norm / e.norm(dim=1, keepdim=True).clamp(min=self.id_max_norm))
        keep = self.trained.to(e.dtype)
        if self.training and self.id_dropout > 0:  # the same items are "new" in input and output
            keep = keep * (torch.rand(self.n_items, device=e.device) >= self.id_dropout).to(e.dtype)
        text = self.text_proj(self.text)
        if self.new_vectors is not None:  # the tuned item tower's vectors of untrained items
            text = torch.where(self.trained[:, None], text, self.new_vectors)
        return F.pad(text + keep[:, None] * e, (0, 0, 0, 1))

    def set_new_item_vectors(self, vectors: np.ndarray) -> None:
        """Serve items without a training interaction from ``vectors`` (n_items, dim), e.g. the
        LoRA-tuned item tower's (rayrec.itemtower); trained items keep their own vectors."""
        if self.text_proj is None:
            raise ValueError("new-item vectors need a text-grounded retriever (retriever.text_init)")
        v = torch.as_tensor(np.asarray(vectors, np.float32))
        if tuple(v.shape) != (self.n_items, self.item.weight.shape[1]):
            raise ValueError(f"new-item vectors must be ({self.n_items}, {self.item.weight.shape[1]})")
        self.new_vectors = v.to(self.item.weight.device)

    def forward(self, seqs: torch.Tensor, vec: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states; ``vec``: the item vectors to read (one draw of the ID dropout shared
        by the input and the softmax), default :meth:`item_vectors`."""
        t = seqs.shape[1]
        real = seqs != self.pad
        # Query t sees keys <= t that are real items; itself always, so no row is all-masked.
        causal = torch.ones(t, t, dtype=torch.bool, device=seqs.device).tril()
        mask = (causal[None] & real[:, None, :]) | torch.eye(t, dtype=torch.bool, device=seqs.device)
        vec = self.item_vectors() if vec is None else vec
        h = self.drop(vec[seqs] * real[..., None] + self.pos.weight[-t:][None])
        for block in self.blocks:
            h = block(h, mask)
        h = self.ln(h)
        if self.text_query is not None:
            h = h + self.text_query(self.history_text(seqs, real))
        return h

    def history_text(self, seqs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, T, d_text): at each position, the unit-norm recency-weighted mean of the text
        vectors read so far, q_t ~ sum_{k<=t} decay^(t-k) x_{i_k} (the text index's history query)."""
        t = seqs.shape[1]
        pos = torch.arange(t, device=seqs.device, dtype=torch.float32)
        age = pos[:, None] - pos[None, :]  # (T, T): t - k
        weights = torch.where(age >= 0, self.query_decay ** age.clamp(min=0), torch.zeros_like(age))
        weights = weights[None] * real[:, None, :].to(weights.dtype)  # (B, T, T), pads weigh 0
        text = F.pad(self.text, (0, 0, 0, 1))[seqs]  # (B, T, d_text), the pad row is zero
        return F.normalize(weights @ text, dim=-1)

    def user_vectors(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, dim): the hidden state at the newest item, which scores the next one."""
        return self.forward(seqs)[:, -1]


def sequence_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor,
                  cfg: RetrieverConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next-item cross-entropy at every real position of a batch of left-padded sequences.

    full:    CE over all n items: logits (P, n) = H V^T, P real positions in the batch.
    sampled: CE over [target, N shared uniform negatives], a negative equal to the target
             masked out; cost P x (N + 1) instead of P x n.
    """
    net = model.module if hasattr(model, "module") else model  # DDP wraps the module
    all_vec = net.item_vectors()
    h = model(inputs, all_vec)
    keep = targets != net.pad
    h, y = h[keep], targets[keep]
    vec = all_vec[: net.n_items]
    absent = getattr(net, "trained", None)  # text_init: items without a training interaction
    absent = None if absent is None or bool(absent.all()) else ~absent
    if cfg.loss == "full":
        logits = h @ vec.T
        return F.cross_entropy(logits if absent is None else logits.masked_fill(absent, float("-inf")), y)
    neg = torch.randint(0, net.n_items, (cfg.num_negatives,), generator=generator).to(h.device)
    drop = neg[None] == y[:, None]
    if absent is not None:
        drop = drop | absent[neg][None]
    pos_logit = (h * vec[y]).sum(-1, keepdim=True)
    neg_logit = (h @ vec[neg].T).masked_fill(drop, float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=h.device))


def save_retriever(out_dir: str | Path, model: SASRec, cfg: RetrieverConfig, extra: dict | None = None) -> str:
    """Write ``retriever.pt`` (state dict) and ``retriever.json`` (config, catalog size)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = model.module if hasattr(model, "module") else model
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / MODEL_FILE)
    meta = {"n_items": net.n_items, "config": cfg.model_dump(mode="json"), **(extra or {})}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return str(out)


def load_retriever(model_dir: str | Path) -> tuple[SASRec, dict]:
    """The saved network in eval mode, and its metadata."""
    d = str(model_dir)  # a local path or a URI
    if not storage.is_file(storage.join(d, META_FILE)) or not storage.is_file(storage.join(d, MODEL_FILE)):
        raise FileNotFoundError(f"no trained retriever at {d} (missing {META_FILE} or {MODEL_FILE}); "
                                "run `rayrec train-retriever` first")
    meta = json.loads(storage.read_text(storage.join(d, META_FILE)))
    cfg = RetrieverConfig.model_validate(meta["config"])
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(d, MODEL_FILE))), map_location="cpu",
                       weights_only=True)
    text, trained = state.get("text"), state.get("trained")
    model = SASRec(int(meta["n_items"]), cfg, None if text is None else text.numpy(),
                   None if trained is None else trained.numpy())
    if state.get("new_vectors") is not None:
        model.set_new_item_vectors(state["new_vectors"].numpy())
    model.load_state_dict(state)
    return model.eval(), meta
