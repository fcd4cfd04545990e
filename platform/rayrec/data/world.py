"""The synthetic world's ground truth: who would click what, and why.

Users and items live in a shared latent space; each item also belongs to a category and
has a popularity bias drawn from a power law. The true click probability is

    p(u, i) = sigmoid(scale * <user_u, item_i> + bias_i + offset)

This is the environment exploration experiments run against, and the process that the
synthetic event log (``rayrec.data.synthetic``) is sampled from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayrec.data.config import SyntheticWorldConfig

_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Golden", "Last", "Electric", "Wild", "Broken", "Secret",
    "Midnight", "Lost", "Brave", "Frozen", "Burning", "Little", "Endless", "Quiet", "Final",
    "Distant", "Hollow", "Bright", "Lucky", "Savage", "Gentle", "Iron", "Paper", "Velvet",
)
_NOUNS = (
    "River", "Empire", "Garden", "Signal", "Harbor", "Machine", "Kingdom", "Orchard", "Mirror",
    "Voyage", "Summer", "Circus", "Frontier", "Lantern", "Island", "Comet", "Station", "Forest",
    "Detective", "Dragon", "Recipe", "Symphony", "Galaxy", "Canyon", "Library", "Engine",
)
CATEGORY_NAMES = (
    "Comedy", "Drama", "Sci-Fi", "Horror", "Romance", "Documentary", "Animation", "Thriller",
    "Fantasy", "Western", "Musical", "Crime", "Adventure", "Mystery", "War", "Sports",
)


@dataclass
class SyntheticWorld:
    """Latent tastes and item properties; ids are the world's own 0-based integers."""

    user_factors: np.ndarray  # (n_users, d) float32
    item_factors: np.ndarray  # (n_items, d) float32
    item_bias: np.ndarray  # (n_items,) float32, log-popularity
    item_category: np.ndarray  # (n_items,) int64 index into category_names
    category_names: list[str]
    titles: list[str]
    scale: float = 2.0
    offset: float = -3.0

    @property
    def n_users(self) -> int:
        return int(self.user_factors.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def click_probability(self, user_idx: np.ndarray | int, item_idx: np.ndarray | int) -> np.ndarray:
        """True click probability; user_idx and item_idx broadcast against each other."""
        u = self.user_factors[np.asarray(user_idx)]
        v = self.item_factors[np.asarray(item_idx)]
        logits = self.scale * np.sum(u * v, axis=-1) + self.item_bias[np.asarray(item_idx)] + self.offset
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float64)

    def user_probabilities(self, user_idx: int) -> np.ndarray:
        """Click probability of one user for every item, shape (n_items,)."""
        return self.click_probability(np.full(self.n_items, user_idx), np.arange(self.n_items))

    def item_text(self, item_idx: int) -> str:
        return f"{self.titles[item_idx]} ({self.category_names[self.item_category[item_idx]]})"

    @classmethod
    def generate(cls, cfg: SyntheticWorldConfig) -> SyntheticWorld:
        """Draw a world deterministically from ``cfg.seed``."""
        rng = np.random.default_rng(cfg.seed)
        d, n_cat = cfg.latent_dim, min(cfg.n_categories, len(CATEGORY_NAMES))
        # Categories are directions in taste space; items sit near their category's centre.
        centres = rng.normal(size=(n_cat, d))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        item_category = rng.integers(0, n_cat, size=cfg.n_items)
        items = centres[item_category] + 0.5 * rng.normal(size=(cfg.n_items, d)) / np.sqrt(d)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        # Each user likes one or two categories, plus personal noise.
        fav = rng.integers(0, n_cat, size=(cfg.n_users, 2))
        mix = rng.uniform(0.5, 1.0, size=(cfg.n_users, 1))
        users = mix * centres[fav[:, 0]] + (1 - mix) * centres[fav[:, 1]]
        users += 0.4 * rng.normal(size=(cfg.n_users, d)) / np.sqrt(d)
        users /= np.linalg.norm(users, axis=1, keepdims=True)
        # Power-law popularity: rank r gets weight r^-exponent, shuffled over items.
        ranks = rng.permutation(cfg.n_items) + 1
        pop = ranks.astype(np.float64) ** (-cfg.popularity_exponent)
        bias = np.log(pop / pop.mean()) * 0.5
        titles = _make_titles(rng, cfg.n_items)
        return cls(
            user_factors=users.astype(np.float32),
            item_factors=items.astype(np.float32),
            item_bias=bias.astype(np.float32),
            item_category=item_category.astype(np.int64),
            category_names=list(CATEGORY_NAMES[:n_cat]),
            titles=titles,
        )

    def save(self, directory: str | Path) -> None:
        """Write ``world.npz`` (arrays) and ``world.json`` (names, titles, link parameters)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path / "world.npz",
            user_factors=self.user_factors,
            item_factors=self.item_factors,
            item_bias=self.item_bias,
            item_category=self.item_category,
        )
        meta = {"category_names": self.category_names, "titles": self.titles,
                "scale": self.scale, "offset": self.offset,
                "link": "p = sigmoid(scale * <user, item> + item_bias + offset)"}
        (path / "world.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticWorld:
        path = Path(directory)
        arrays = np.load(path / "world.npz")
        meta = json.loads((path / "world.json").read_text())
        return cls(
            user_factors=arrays["user_factors"], item_factors=arrays["item_factors"],
            item_bias=arrays["item_bias"], item_category=arrays["item_category"],
            category_names=meta["category_names"], titles=meta["titles"],
            scale=meta["scale"], offset=meta["offset"],
        )


def _make_titles(rng: np.random.Generator, n: int) -> list[str]:
    """Readable, mostly unique titles like 'The Silent Harbor' or 'Golden Comet II'."""
    titles, seen = [], set()
    for i in range(n):
        adj, noun = _ADJECTIVES[rng.integers(len(_ADJECTIVES))], _NOUNS[rng.integers(len(_NOUNS))]
        base = f"The {adj} {noun}" if rng.random() < 0.5 else f"{adj} {noun}"
        title = base
        if title in seen:
            title = f"{base} {['II', 'III', 'Returns', 'Reborn'][i % 4]}"
        if title in seen:
            title = f"{base} ({1970 + i % 55})"
        if title in seen:
            title = f"{base} #{i}"
        seen.add(title)
        titles.append(title)
    return titles
