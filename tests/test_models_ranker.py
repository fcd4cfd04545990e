"""The ranker per family: scoring shape/determinism, one training step, save/load round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from rayrec.models.backbone import backbone_family, default_lora_targets, resolve_backbone
from rayrec.models.collate import RankerCollator
from rayrec.models.config import ModelConfig
from rayrec.models.losses import ranking_loss
from rayrec.models.prior import candidate_priors, popularity_prior
from rayrec.models.ranker import PRIOR_GAIN, build_ranker, load_ranker, save_ranker, train_scores
from rayrec.models.tiny import make_tiny_backbone

HIST = ["red car | red boat | red lamp", "blue cup"]
CANDS = [["red apple", "blue car", "green cup", "black shoe"], ["blue tree", "white lamp", "red cup"]]
PRIORS = [[1.5, -0.5, 0.0, -1.0], [0.3, 2.0, -0.7]]
CASES = [
    ("bert", "cross_encoder", "bce"),
    ("gpt2", "causal_yesno", "bce"),
    ("llama", "causal_listwise", "listwise"),
    ("qwen2", "causal_yesno", "mse"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def test_resolve_minilm_and_family():
    path = resolve_backbone("minilm")
    assert backbone_family(path) == "bert"
    assert resolve_backbone("org/some-model") == "org/some-model"
    assert default_lora_targets("gpt2") == ["c_attn"]
    assert "q_proj" in default_lora_targets("llama")


@pytest.mark.parametrize("family,kind,loss", CASES)
def test_family_scores_trains_and_round_trips(tiny_dir, family, kind, loss):
    cfg = ModelConfig(backbone=make_tiny_backbone(family, tiny_dir / family), kind=kind, loss=loss,
                      max_length=40, listwise_window=3, lora={"r": 4, "dropout": 0.0})
    ranker = load_ranker(cfg, None)
    before = ranker.score(HIST, CANDS)
    assert [s.shape for s in before] == [(4,), (3,)]
    assert all(np.isfinite(s).all() for s in before)
    np.testing.assert_array_equal(before[0], ranker.score(HIST[:1], CANDS[:1])[0])

    model, collator = build_ranker(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "prior_weight" in trainable
    assert all("lora_" in n or n.startswith("head.") or n == "prior_weight" for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scores, mask, n_tok = train_scores(model, collator, HIST, CANDS, random.Random(0), "cpu", PRIORS)
    assert scores.shape == (2, 4) and mask.sum().item() == 7 and n_tok > 0
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    loss_value = ranking_loss(loss, scores, labels, mask)
    loss_value.backward()
    opt.step()
    model.eval()
    out = tiny_dir / f"saved_{family}"
    save_ranker(out, cfg, model, collator)
    reloaded_ranker = load_ranker(cfg, str(out))
    reloaded = reloaded_ranker.score(HIST, CANDS, PRIORS)
    direct = load_ranker(cfg, None)
    direct.model = model
    expected = direct.score(HIST, CANDS, PRIORS)
    assert reloaded_ranker.prior_weight == pytest.approx(direct.prior_weight)
    assert reloaded_ranker.prior_weight != pytest.approx(1.0)  # the step moved the prior weight
    for a, b, c in zip(reloaded, expected, before, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert not np.allclose(a, c, atol=1e-6)  # the step changed the scorer


@pytest.mark.parametrize("family,kind", [("bert", "cross_encoder"), ("llama", "causal_listwise")])
def test_popularity_prior_adds_weight_times_prior(tiny_dir, family, kind):
    cfg = ModelConfig(backbone=make_tiny_backbone(family, tiny_dir / f"{family}_p"), kind=kind,
                      max_length=40, listwise_window=3)
    ranker = load_ranker(cfg, None)
    assert ranker.prior_weight == pytest.approx(1.0)
    text_only = ranker.score(HIST, CANDS)
    with_prior = ranker.score(HIST, CANDS, PRIORS)
    for t, w, p in zip(text_only, with_prior, PRIORS, strict=True):
        np.testing.assert_allclose(w, t + np.asarray(p, dtype=np.float32), atol=1e-5)
    with pytest.raises(ValueError, match="one value per candidate"):
        ranker.score(HIST, CANDS, [PRIORS[0], PRIORS[1][:2]])
    off = load_ranker(cfg.model_copy(update={"popularity_prior": False}), None)
    assert off.prior_weight is None
    np.testing.assert_allclose(off.score(HIST, CANDS, PRIORS)[0], off.score(HIST, CANDS)[0])


def test_popularity_prior_values():
    prior = popularity_prior(np.array([0, 1, 10, 100, 0]))
    assert prior.dtype == np.float32
    assert abs(prior.mean()) < 1e-6 and abs(prior.std() - 1) < 1e-5
    assert prior[3] > prior[2] > prior[1] > prior[0] == prior[4]
    np.testing.assert_array_equal(popularity_prior(np.array([3, 3])), [0, 0])
    got = candidate_priors(prior, [[3, 0], [7, -1, 2]])  # unknown items get the catalog minimum
    np.testing.assert_array_equal(got[0], prior[[3, 0]])
    np.testing.assert_array_equal(got[1], [prior.min(), prior.min(), prior[2]])
    with pytest.raises(ValueError):
        popularity_prior(np.array([1, -2]))


def test_listwise_windows_cover_every_candidate(tiny_dir):
    cfg = ModelConfig(backbone=make_tiny_backbone("llama", tiny_dir / "llama_w"),
                      kind="causal_listwise", listwise_window=4)
    ranker = load_ranker(cfg, None)
    cands = [[f"item {i}" for i in range(10)]]
    seqs = ranker.collator.plan(HIST[:1], cands)
    assert [len(s.positions) for s in seqs] == [4, 4, 2]
    assert sorted(p for s in seqs for p in s.positions) == list(range(10))
    assert np.isfinite(ranker.score(HIST[:1], cands)[0]).all()


def test_history_is_truncated_oldest_first(tiny_dir):
    cfg = ModelConfig(backbone=make_tiny_backbone("gpt2", tiny_dir / "gpt2_t"), kind="causal_yesno",
                      max_length=70)
    ranker = load_ranker(cfg, None)
    long_hist = " | ".join(f"old{i}" for i in range(200)) + " | newest"
    batch = ranker.collator.encode(ranker.collator.plan([long_hist], [["red apple"]]))
    assert batch["input_ids"].shape[1] <= 70
    text = ranker.tokenizer.decode(batch["input_ids"][0])
    assert "newest" in text and "old0 " not in text and text.rstrip().endswith("Answer:")


def test_kind_family_mismatch_is_a_clear_error(tiny_dir):
    path = make_tiny_backbone("bert", tiny_dir / "bert_m")
    with pytest.raises(ValueError, match="causal LM backbone"):
        build_ranker(ModelConfig(backbone=path, kind="causal_yesno"))
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="encoder backbone"):
        RankerCollator(AutoTokenizer.from_pretrained(path), ModelConfig(kind="cross_encoder"), True)


def test_losses_prefer_the_positive():
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.ones_like(labels, dtype=torch.bool)
    good, bad = torch.tensor([[3.0, -1.0, -2.0]]), torch.tensor([[-2.0, 3.0, 1.0]])
    for kind in ("bce", "mse", "listwise"):
        assert ranking_loss(kind, good, labels, mask) < ranking_loss(kind, bad, labels, mask)
    # Masked-out candidates do not count.
    mask2 = torch.tensor([[True, True, False]])
    padded = torch.tensor([[3.0, -1.0, 100.0]])
    assert ranking_loss("listwise", padded, labels, mask2) == pytest.approx(
        ranking_loss("listwise", good[:, :2], labels[:, :2], mask[:, :2]).item())


def test_retrieval_prior_is_a_second_learned_prior(tiny_dir):
    from rayrec.models.prior import prior_names, ranker_priors

    cfg = ModelConfig(backbone=make_tiny_backbone("bert", tiny_dir / "bert_r"), max_length=40,
                      retrieval_prior=True)
    assert prior_names(cfg) == ["popularity", "retrieval"]
    ranker = load_ranker(cfg, None)
    np.testing.assert_allclose(ranker.prior_weights, [1.0, 0.0])  # retrieval: ignored until learned
    with torch.no_grad():
        ranker.model.prior_weight[1] = 0.5 / PRIOR_GAIN
    item_prior = popularity_prior(np.arange(10))
    cands = [[3, 0, 7, 1], [1, 2, 5]]  # item ids of CANDS
    retrieval = [np.array([2.0, -1.0, 0.5, 0.0]), None]  # a list without retriever scores reads 0
    priors = ranker_priors(cfg, item_prior, cands, retrieval)
    assert [p.shape for p in priors] == [(4, 2), (3, 2)]
    np.testing.assert_array_equal(priors[1][:, 1], 0.0)
    text = ranker.score(HIST, CANDS)
    both = ranker.score(HIST, CANDS, priors)
    for t, b, p in zip(text, both, priors, strict=True):
        np.testing.assert_allclose(b, t + p[:, 0] + 0.5 * p[:, 1], atol=1e-5)


def test_ranker_on_mined_lists_starts_as_the_retrievers_order(tiny_dir):
    """start_from_retrieval: weights (popularity 0, retrieval 1) and a zero head, so before any
    step the ranker's scores are the retriever's log-lift exactly (what training improves on)."""
    from rayrec.models.prior import ranker_priors

    cfg = ModelConfig(backbone=make_tiny_backbone("bert", tiny_dir / "bert_s"), max_length=40,
                      retrieval_prior=True)
    ranker = load_ranker(cfg, None)
    ranker.model.start_from_retrieval()
    np.testing.assert_allclose(ranker.prior_weights, [0.0, 1.0])
    retrieval = [np.array([2.0, -1.0, 0.5, 0.0]), np.array([0.1, 0.3, -0.2])]
    priors = ranker_priors(cfg, popularity_prior(np.arange(10)), [[3, 0, 7, 1], [1, 2, 5]], retrieval)
    for got, want in zip(ranker.score(HIST, CANDS, priors), retrieval, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    popularity_only = load_ranker(ModelConfig(backbone=cfg.backbone, max_length=40, retrieval_prior=False), None)
    popularity_only.model.start_from_retrieval()  # no retrieval prior: nothing to start from
    np.testing.assert_allclose(popularity_only.prior_weights, [1.0])


@pytest.mark.parametrize("family,kind", [("bert", "cross_encoder"), ("llama", "causal_yesno")])
def test_int8_scores_follow_fp32(tiny_dir, family, kind):
    """model.precision=int8: the adapter is merged, every backbone Linear is int8, and the scores
    stay close to fp32's (same candidates, same order for clearly separated ones)."""
    from rayrec.models.ranker import resolve_precision

    cfg = ModelConfig(backbone=make_tiny_backbone(family, tiny_dir / family), kind=kind,
                      max_length=40, lora={"r": 4, "dropout": 0.0})
    model, collator = build_ranker(cfg, seed=3)
    with torch.no_grad():  # a non-zero adapter, so merging it matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out = tiny_dir / f"int8_{family}"
    save_ranker(out, cfg, model, collator)
    fp32 = load_ranker(cfg.model_copy(update={"precision": "fp32"}), str(out))
    int8 = load_ranker(cfg.model_copy(update={"precision": "int8"}), str(out))
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    # auto on a CPU: int8 for the embedded backbones it was measured on, fp32 for others
    assert load_ranker(cfg, str(out)).precision == "fp32"
    assert resolve_precision("auto", torch.device("cpu"), "minilm") == "int8"
    assert resolve_precision("auto", torch.device("cuda"), "minilm") == "bf16"
    modules = list(int8.model.backbone.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)  # no fp32 matmul left
    assert sum(type(m) is torch.ao.nn.quantized.dynamic.Linear for m in modules) >= 4
    assert not any("lora" in name for name, _ in int8.model.named_parameters())  # merged
    a, b = fp32.score(HIST, CANDS, PRIORS), int8.score(HIST, CANDS, PRIORS)
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() < 0.05 * (np.abs(x).max() + 1e-3) + 0.02, (x, y)
    with pytest.raises(ValueError, match="CPU path"):
        resolve_precision("int8", torch.device("cuda"))


WORDS = ["Star", "Wars", "(1977)", "Toy", "Story", "Adventure|Animation|Children", "L'Appartement",
         "Amélie", "Wall·E", "don't", "C'era una volta", "2001:", "Odyssey", "Tiger,", "(Wo", "long)"]


@pytest.mark.parametrize("max_length", [32, 64, 200])
def test_encoder_pairs_match_the_tokenizers_own_pair_call(max_length):
    """The (candidate, history) template gives exactly the ids, segments and mask of the
    tokenizer's ``truncation="only_second"`` pair call, history cut oldest-first, for the
    embedded MiniLM tokenizer; candidates come from the collator's cache the second time."""
    from transformers import AutoTokenizer

    rng = random.Random(max_length)
    collator = RankerCollator(AutoTokenizer.from_pretrained(resolve_backbone("minilm")),
                              ModelConfig(kind="cross_encoder", max_length=max_length), False)
    assert collator._pair is not None  # the template reproduced the probe pairs

    def title():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))

    for _ in range(40):
        hist = [" | ".join(title() for _ in range(rng.randint(0, 20))) for _ in range(rng.randint(1, 3))]
        seqs = collator.plan(hist, [[title() for _ in range(rng.randint(1, 10))] for _ in hist])
        for _ in range(2):  # the second time every candidate's tokens come from the cache
            fast, slow = collator.encode(seqs), collator._encode_pairs_slow(seqs)
            assert set(fast) == set(slow) == {"input_ids", "token_type_ids", "attention_mask"}
            for k in slow:
                assert torch.equal(fast[k], slow[k]), k


@pytest.mark.parametrize("kind", ["causal_yesno", "causal_listwise"])
def test_causal_prompts_are_the_same_from_the_cache(tiny_dir, kind):
    """A collator that has seen the candidates (cached prompt pieces) encodes what a fresh one does."""
    from transformers import AutoTokenizer

    path = make_tiny_backbone("llama", tiny_dir / "llama")
    cfg = ModelConfig(kind=kind, max_length=48, listwise_window=3)
    warm = RankerCollator(AutoTokenizer.from_pretrained(path), cfg, True)
    seqs = warm.plan(HIST, CANDS)
    warm.encode(seqs)
    got = warm.encode(seqs)
    want = RankerCollator(AutoTokenizer.from_pretrained(path), cfg, True).encode(seqs)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_max_length_too_short_for_the_probe_keeps_the_pair_call():
    """A config the probe pairs do not fit (max_length 8) still builds its collator, on the
    tokenizer's own pair call, instead of failing at start-up."""
    from transformers import AutoTokenizer

    collator = RankerCollator(AutoTokenizer.from_pretrained(resolve_backbone("minilm")),
                              ModelConfig(kind="cross_encoder", max_length=8), False)
    assert collator._pair is None
    batch = collator.encode(collator.plan(["red car | blue cup"], [["red apple", "green tree"]]))
    assert batch["input_ids"].shape == (2, 8)
