"""Generative recommendation: a causal LM writes item titles, constrained to the catalog.

``trie``: the catalog's tokenised titles as a prefix tree (every path is an item);
``decode``: beam search through the trie (K distinct items, each with its log-probability);
``prompts``: what the model reads (history and/or a free-text request) and, to tune it, writes.
"""
