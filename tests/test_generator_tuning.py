"""LoRA-tuning the generator: its examples and loss, its config, and a real Ray Train +
DeepSpeed + peft run that teaches a tiny random causal LM which title comes next."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rayrec.config import load_config
from rayrec.errors import ConfigError
from test_seqrec import write_cyclic_dataset

# Every user walks this catalog in order (Alien -> Brazil -> ... -> Heat -> Alien): the title
# after X is always the next one. Distinct first letters: the first token names the item.
TOY = ["Alien", "Brazil", "Casablanca", "Dune", "Eraserhead", "Fargo", "Gattaca", "Heat"]
# LoRA everywhere, the head included: a random tiny model's logits are ~0.1 wide, and frozen
# attention-only LoRA cannot make any title likely (a real LM's head already can).
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from rayrec.models.tiny import make_tiny_backbone

    return make_tiny_backbone("llama", tmp_path_factory.mktemp("gen_tune") / "tiny_llama")


def test_examples_slide_over_train_sequences_and_score_only_the_title(tmp_path, tiny_llama):
    """(history_items titles before t -> title t) for the newest positions of each train
    sequence, capped; validation = the held-out valid item. Batches are left-padded and only
    title tokens are labelled: the loss equals the model's own loss on each unpadded row."""
    from rayrec.generative import prompts
    from rayrec.generative.config import GeneratorConfig
    from rayrec.generative.examples import (
        IGNORE,
        build_examples,
        collate,
        target_logits,
        target_nll,
        tokenize,
    )
    from rayrec.seqrec.data import load_sequences
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_cyclic_dataset(tmp_path / "data", titles=TOY, n_users=20, seq_len=7)
    data = str(tmp_path / "data")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    gc = GeneratorConfig(backbone=tiny_llama, history_items=2, positions_per_user=3, max_examples=None)
    train, valid = build_examples(data, gc, tok)
    users = load_sequences(data, "valid")

    def row(hist, item):
        return {"prompt": prompts.render(tok, [TOY[i] for i in hist]), "target": prompts.target(tok, TOY[item])}

    want = [row(h[t - 2 : t], h[t]) for h in users["history"] for t in (2, 3, 4)]  # 5 train items each
    assert train == want
    assert valid == [row(h[-2:], y) for h, y in zip(users["history"], users["target"], strict=True)]
    capped, _ = build_examples(data, gc.model_copy(update={"max_examples": 7}), tok)
    assert len(capped) == 7 and all(r in want for r in capped)

    encoded = tokenize(tok, train[:5])
    for (_, t), r in zip(encoded, train[:5], strict=True):  # the title path the trie constrains to
        assert t == tok(r["target"].removesuffix(tok.eos_token), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    encoded[0] = (encoded[0][0][:-9], encoded[0][1])  # rows of different lengths: padding
    batch = collate(encoded, tok.eos_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        nll, count = target_nll(target_logits(model, batch), batch.labels)
        for r, (p, t) in enumerate(encoded):
            assert batch.labels[r][batch.labels[r] != IGNORE].tolist() == t and count[r] == len(t)
            assert batch.attention_mask[r].sum() == len(p) + len(t)
            assert batch.position_ids[r, -len(p) - len(t)] == 0
            ids = torch.tensor([p + t])
            own = model(input_ids=ids, labels=torch.tensor([[IGNORE] * len(p) + t])).loss
            assert nll[r].item() == pytest.approx(own.item() * len(t), rel=1e-4)


def test_bad_generator_config_names_the_field(tmp_path, capsys):
    from rayrec.cli import main
    from rayrec.generative.adapter import resolve_adapter
    from rayrec.generative.config import GeneratorConfig
    from rayrec.generative.loop import build_lora_lm

    for key, value, text in [("generator.lora.r", 0, "generator.lora.r"),
                             ("generator.history_items", 0, "generator.history_items"),
                             ("generator.lora.enabled", False, "LoRA only"),
                             ("generator.bogus", 1, "generator.bogus: unknown field")]:
        with pytest.raises(ConfigError) as e:
            load_config(overrides={key: value})
        assert text in str(e.value) and key.rsplit(".", 1)[0] in str(e.value)
    assert main(["train-generator", "--set", "generator.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayrec train-generator: error: ") and "generator.lr" in err
    with pytest.raises(ValueError, match="generator.backbone 'minilm' is a bert encoder"):
        build_lora_lm(GeneratorConfig(backbone="minilm"))
    cfg = load_config(overrides={"run_dir": str(tmp_path), "evaluate.generative.adapter": "tuned"})
    with pytest.raises(FileNotFoundError, match="rayrec train-generator"):
        resolve_adapter(cfg, cfg.evaluate.generative.adapter, "smollm2-135m", 10)


@pytest.mark.slow
def test_tuned_generator_writes_the_taught_next_title(ray_cluster, tmp_path, tiny_llama):
    """`rayrec train-generator` (1 worker, ZeRO-2, LoRA) on the toy catalog, then the
    full-catalog evaluation with evaluate.generative.adapter=tuned: the constrained generator's
    top-1 for a history ending in X is the title after X for (nearly) every test user, where the
    untuned model's top-1 is about chance (1 of the 3 unseen titles)."""
    import pandas as pd
    from rayrec.cli import main
    from rayrec.evaluation.fullcatalog import run_full_catalog
    from rayrec.generative.adapter import META_FILE, PEFT_CONFIG

    write_cyclic_dataset(tmp_path / "data", titles=TOY, n_users=60, seq_len=6)
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump({
        "generator": {"backbone": tiny_llama, "history_items": 1, "lr": 1e-2, "batch_size": 64,
                      "max_steps": 150, "eval_every_steps": 75, "max_valid_users": 32,
                      "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ALL_MODULES}},
        "train": {"num_workers": 1, "torch_threads": 0},
        "evaluate": {"baselines": False, "ks": [1, 3], "bootstrap": 20,
                     "generative": {"enabled": True, "backbone": tiny_llama, "k": 3, "beams": 3,
                                    "history_items": 1}},
        "tracking": {"enabled": False},
    }))
    assert main(["train-generator", "--config", str(config), "--out", str(tmp_path)]) == 0
    cfg = load_config(config, {"run_dir": str(tmp_path)})
    adapter = Path(cfg.generator_adapter_dir)
    assert (adapter / PEFT_CONFIG).is_file() and (adapter / META_FILE).is_file()

    hr1 = {}
    for name, value in (("zero_shot", None), ("tuned", "tuned")):
        ev = load_config(config, {"run_dir": str(tmp_path), "evaluate.generative.adapter": value,
                                  "evaluate.out": str(tmp_path / f"eval_{name}")})
        result = run_full_catalog(ev)
        hr1[name] = result["models"]["generative"]["hr@1"]
        per_user = pd.read_parquet(result["files"]["per_user"])
        assert len(per_user) == 60 and all(len(set(np.asarray(t).tolist())) == 3 for t in per_user["top"])
    assert "adapter tuned" in result["protocol"]["models"]["generative"]
    print("hr@1", hr1)
    assert hr1["tuned"] >= 0.9 and hr1["tuned"] > hr1["zero_shot"] + 0.3, hr1
