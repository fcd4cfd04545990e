"""Catalog-constrained generation: the trie and beam search with tiny random causal LMs."""

from __future__ import annotations

import pytest
from rayrec.generative.trie import CatalogTrie

# Shared long prefixes, a title that is a prefix of another, a duplicate title, long titles.
TITLES = [
    "Star Wars (1977)",
    "Star Wars: Episode II - Attack of the Clones (2002)",
    "Star Wars: Episode III - Revenge of the Sith (2005)",
    "Star Trek (2009)",
    "Alien (1979)",
    "Aliens (1986)",
    "Alien (1979)",  # a second item with the same title
    "Toy Story (1995)",
    "Toy Story 2 (1999)",
    "The Lord of the Rings: The Fellowship of the Ring (2001)",
    "The Lord of the Rings: The Two Towers (2002)",
    "Heat (1995)",
]


def test_trie_allows_only_catalog_paths_and_respects_bans():
    seqs = [[1, 2, 3], [1, 2], [1, 2, 3, 4], [5], [1, 2]]  # [1, 2] twice: items 1 and 4
    trie = CatalogTrie(seqs, end_id=0)
    view = trie.view()
    assert sorted(view.allowed([])) == [1, 5]
    assert sorted(view.allowed([1, 2])) == [0, 3]  # end here ([1, 2]) or go on
    assert view.allowed([9]) == [] and view.item([1, 2, 0]) == 1 and view.item([1, 2]) is None
    assert trie.max_depth == 5
    banned = trie.view([1, 4, 2])  # both [1, 2] items and [1, 2, 3, 4]: only [1, 2, 3] is left
    assert banned.allowed([1, 2]) == [3] and banned.allowed([1, 2, 3]) == [0]
    assert banned.item([1, 2, 0]) is None and banned.item([1, 2, 3, 4, 0]) is None
    assert banned.item([1, 2, 3, 0]) == 0
    assert trie.view([1]).item([1, 2, 0]) == 4  # the duplicate title still names an open item
    assert sorted(trie.view([0, 1, 2, 3, 4]).allowed([])) == []
    with pytest.raises(ValueError):
        CatalogTrie([], end_id=0)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from rayrec.models.tiny import make_tiny_backbone
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_backbone("llama", tmp_path_factory.mktemp("gen") / "tiny_llama")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("k,beams", [(3, 3), (5, 8), (12, 12)])
def test_generation_yields_distinct_unseen_catalog_items(tiny_lm, k, beams):
    from rayrec.generative import prompts
    from rayrec.generative.decode import generate_items

    model, tok = tiny_lm
    trie = CatalogTrie.from_titles(tok, TITLES)
    assert trie.max_depth > beams  # titles longer than the beam
    seen = [[0, 4], [], [7, 8, 9]]
    batch = [prompts.render(tok, [TITLES[i] for i in s], "something fun") for s in seen]
    out = generate_items(model, tok, trie, batch, k=k, banned=seen, num_beams=beams)
    for got, s in zip(out, seen, strict=True):
        items = got.items.tolist()
        assert len(items) == len(set(items)) and not set(items) & set(s)
        assert all(0 <= i < len(TITLES) for i in items)
        assert got.scores.tolist() == sorted(got.scores.tolist(), reverse=True)
        assert (got.scores < 0).all()
        open_titles = len({t for i, t in enumerate(TITLES) if i not in s})  # a duplicate title is one path
        assert len(items) == min(k, open_titles), (items, k, open_titles)


def test_wide_beam_search_equals_scoring_every_title(tiny_lm):
    """With as many beams as titles the search is exhaustive: its top k and their scores equal
    log p(title, end | prompt) computed title by title."""
    import torch
    from rayrec.generative import prompts
    from rayrec.generative.decode import generate_items

    model, tok = tiny_lm
    trie = CatalogTrie.from_titles(tok, TITLES)
    prompt = prompts.render(tok, ["Heat (1995)"])
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    exact = {}
    for title in TITLES:
        t_ids = [*tok(title, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p_ids + t_ids])).logits[0].float(), -1)
        exact.setdefault(title, sum(logp[len(p_ids) - 1 + j, t].item() for j, t in enumerate(t_ids)))
    got = generate_items(model, tok, trie, [prompt], k=5, banned=[[11]], num_beams=len(TITLES))[0]
    best = sorted((s, t) for t, s in exact.items() if t != "Heat (1995)")[::-1][:5]
    assert [TITLES[i] for i in got.items] == [t for _, t in best]
    assert got.scores == pytest.approx([s for s, _ in best], abs=1e-4)


def test_generator_is_a_system_of_the_full_catalog_evaluation(tmp_path):
    """evaluate.generative: the generator's lists sit beside popularity and ALS on the same users,
    with paired comparisons; every list holds distinct catalog items the user has not seen."""
    import numpy as np
    import pandas as pd
    from rayrec.config import load_config
    from rayrec.evaluation.fullcatalog import run_full_catalog
    from rayrec.models.tiny import make_tiny_backbone
    from rayrec.seqrec.data import load_sequences
    from test_seqrec import write_cyclic_dataset

    write_cyclic_dataset(tmp_path / "data")
    backbone = make_tiny_backbone("llama", tmp_path / "tiny_llama")
    cfg = load_config(overrides={
        "run_dir": str(tmp_path), "evaluate.max_users": 6, "evaluate.bootstrap": 20,
        "evaluate.generative.enabled": True, "evaluate.generative.backbone": str(backbone),
        "evaluate.generative.k": 5, "evaluate.generative.beams": 5, "tracking.enabled": False,
    })
    result = run_full_catalog(cfg)
    assert {"popularity", "als", "generative"} <= set(result["models"])
    assert "generative_vs_popularity" in result["comparisons"]
    assert "zero-shot" in result["protocol"]["models"]["generative"]
    per_user = pd.read_parquet(result["files"]["per_user"])
    seen = load_sequences(cfg.data_dir, "test").set_index("user_idx")["history"]
    gen = per_user[per_user["model"] == "generative"]
    assert len(gen) == 6
    for u, top in zip(gen["user_idx"], gen["top"], strict=True):
        top = np.asarray(top)
        assert len(top) == 5 and len(set(top.tolist())) == 5
        assert not set(top.tolist()) & set(np.asarray(seen[u]).tolist())


# ---- explanations --------------------------------------------------------------------------

ITEM_TEXTS = [
    "Toy Story (1995) | Genres: Adventure, Animation, Children | Tags: pixar, fun",
    "Jumanji (1995) | Genres: Adventure, Children, Fantasy | Tags: magic board game",
    "Alien (1979) | Genres: Horror, Sci-Fi | Tags: space",
    "Aliens (1986) | Genres: Action, Horror, Sci-Fi",
    "Star Wars: Episode IV - A New Hope (1977) | Genres: Action, Adventure, Sci-Fi",
]


@pytest.mark.parametrize("sentence,grounded,flag", [
    ("You might enjoy Jumanji: like Toy Story it is a fun Adventure for Children.", True, None),
    ("This movie is a great choice for a family evening.", True, None),
    ("Jumanji is a fun ride, and fans of Aliens will love it.", False, ("invented_items", ["Aliens"])),
    ("Jumanji is a Horror classic.", False, ("unsupported_genres", ["Horror"])),
    ("Jumanji stars Robin Williams.", False, ("unsupported_names", ["Robin", "Williams"])),
    ("Jumanji came out in 1995, after Toy Story.", True, None),
    ("Jumanji came out in 1997.", False, ("unsupported_names", ["1997"])),
])
def test_grounding_check_names_only_facts_of_item_history_and_request(sentence, grounded, flag):
    from rayrec.generative.grounding import GroundingCheck

    check = GroundingCheck(ITEM_TEXTS)
    g = check.check(sentence, ITEM_TEXTS[1], [ITEM_TEXTS[0]], request="something fun")
    assert g.grounded is grounded, g
    if flag:
        assert getattr(g, flag[0]) == flag[1]
    # the request is a fact too: a genre the user asked for may be named
    assert check.check("A Horror pick, as you asked.", ITEM_TEXTS[1], [], "Horror please").grounded
    assert check.titles_in("Alien and Aliens, then Star Wars") == ["Alien", "Aliens"]


def test_explainer_keeps_its_deadline_and_writes_whole_sentences(tiny_lm):
    import time

    from rayrec.generative.explain import Explainer, first_sentence

    model, tok = tiny_lm
    explainer = Explainer(model, tok, max_new_tokens=12)
    out = explainer.explain(ITEM_TEXTS[:2], ITEM_TEXTS[2:5], "scary", deadline=time.time() + 30)
    assert len(out) == 3 and all(e is not None for e in out)
    assert all(e.tokens <= 12 and e.seconds < 30 for e in out)
    # a random model rarely ends a sentence in 12 tokens: such text is marked, never passed as whole
    assert all(e.cut in (None, "length") for e in out)
    assert all(e.cut is not None or e.text.endswith((".", "!", "?")) or e.tokens < 12 for e in out)
    late = explainer.explain(ITEM_TEXTS[:2], ITEM_TEXTS[2:5], None, deadline=time.time() - 1)
    assert late == [None, None, None]  # out of time: nothing started, nothing half-written
    # Once it knows the cost per item it does not start one that cannot finish.
    explainer._s_per_item = 5.0
    t0 = time.time()
    assert explainer.explain([], ITEM_TEXTS[2:4], None, deadline=t0 + 1.0) == [None, None]
    assert time.time() - t0 < 0.5
    assert first_sentence("Because it is fun. Also long\nnext") == "Because it is fun."
