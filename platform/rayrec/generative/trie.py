"""The catalog as a prefix tree of tokenised titles, for constrained decoding.

Every root-to-leaf path is one title followed by the end token, so a decoder that only ever
takes an allowed token can only write catalog titles: titles that share long prefixes split
where they differ, and a title that is a prefix of another ("Alien" / "Aliens") is told apart
by the end token. Per request, items can be banned (those the user has seen): a token stays
allowed while the subtree under it still holds an item that is not banned, which costs one
walk up each banned item's path, not a rebuild of the tree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


class CatalogTrie:
    """Prefix tree over token sequences; ``sequences[i]`` spells item ``i``."""

    def __init__(self, sequences: Sequence[Sequence[int]], end_id: int) -> None:
        if not sequences:
            raise ValueError("an empty catalog has no titles to generate")
        self.end_id = end_id
        self.children: list[dict[int, int]] = [{}]  # node -> {token: child}; node 0 is the root
        self.below: list[int] = [0]  # node -> number of items whose path passes through it
        self.leaf_items: dict[int, list[int]] = {}  # leaf -> items with exactly this title
        self.paths: list[list[int]] = []  # item -> nodes on its path (root first)
        self.max_depth = 0  # tokens in the longest title + end
        for seq in sequences:
            self.add(seq)

    def add(self, seq: Sequence[int]) -> int:
        """Append one title's path; returns its item (the next index). Items added to a running
        catalog join the tree this way, no rebuild: views made after it can generate them."""
        item = len(self.paths)
        node, path = 0, [0]
        for token in [*seq, self.end_id]:
            child = self.children[node].get(token)
            if child is None:
                child = self.children[node][token] = len(self.children)
                self.children.append({})
                self.below.append(0)
            node = child
            path.append(node)
        for n in path:
            self.below[n] += 1
        self.leaf_items.setdefault(node, []).append(item)
        self.paths.append(path)
        self.max_depth = max(self.max_depth, len(path) - 1)
        return item

    @classmethod
    def from_titles(cls, tokenizer, titles: Iterable[str]) -> CatalogTrie:
        """Titles tokenised as the model writes them after the prompt (no special tokens)."""
        return cls(title_tokens(tokenizer, titles), tokenizer.eos_token_id)

    def view(self, banned: Iterable[int] = ()) -> TrieView:
        """This catalog minus ``banned`` items (e.g. the user's history)."""
        banned = set(banned)
        removed: Counter = Counter()
        for item in banned:
            removed.update(self.paths[item])
        return TrieView(self, removed, banned)


def title_tokens(tokenizer, titles: Iterable[str]) -> list[list[int]]:
    """Each title's tokens as the model writes them after the prompt (no special tokens)."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in titles]


class TrieView:
    """A request's view of the trie: what may follow a prefix, and which item a path spells."""

    def __init__(self, trie: CatalogTrie, removed: Counter, banned: set[int]) -> None:
        self.trie = trie
        self.removed = removed  # node -> banned items under it
        self.banned = banned

    def _node(self, prefix: Sequence[int]) -> int | None:
        node = 0
        for token in prefix:
            node = self.trie.children[node].get(token)
            if node is None:
                return None
        return node

    def _open(self, node: int) -> bool:
        return self.trie.below[node] - self.removed[node] > 0

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that keep ``prefix`` on the way to an item that is not banned."""
        node = self._node(prefix)
        if node is None:
            return []
        return [t for t, child in self.trie.children[node].items() if self._open(child)]

    def item(self, generated: Sequence[int]) -> int | None:
        """The item a finished path spells (tokens up to and including the end token), or None."""
        node = self._node(generated)
        if node is None or node not in self.trie.leaf_items:
            return None
        return next((i for i in self.trie.leaf_items[node] if i not in self.banned), None)
