"""The synthetic world's ground truth: who would click what, in which order, and what items say.

Taste
-----
Users and items are unit vectors in a shared d-dimensional latent space. Each category is a
random unit direction; items sit near their category's centre, users mix one or two
categories, and item popularity is a power law over a random item order. The static click
probability is

    p(u, i) = sigmoid(scale * <user_u, item_i> + bias_i + offset),  bias_i = 0.5 log(pop_i / mean pop)

Text and series are read off these draws from random streams of their own and never change
them: a seed's click model is the same whatever the text, series and sequence knobs say (and
the same as before the world had text), so exploration results stay comparable.

Item text
---------
``A = 16`` *text axes* ``a_1..a_A`` (``text_axes``) give the space a vocabulary: each axis has
a positive and a negative pole, each pole two themes, moods, settings and title nouns (axis
2: ``+`` "hauntings", "creepy", "an old mansion"; ``-`` "slapstick", "funny", "a toy shop").
The axes are the orthogonal Procrustes rotation that best maps every category centre onto two
poles that fit its name (Horror = fear + psychological, Comedy = comedy + friendship), so
items read like their genre and a pretrained language model's sense of words applies.

``text_i = "Title | Genres: Category | description"`` (:meth:`SyntheticWorld.item_text`, the
same string preprocessing builds from :func:`rayrec.data.synthetic.catalog_table`). Rank the
axes by ``|<item_i, a_k>|`` (strongest first: r1, r2, ...) and take the pole of each sign; the
description fills five slots, e.g. "A creepy, unsettling tale of hauntings set in an asylum,
with obsession.", with the mood and theme of r1, the mood of r2, the setting of r3 and the
theme of r4, and the title ends in a noun of r1 ("The Silent Crypt"). Each slot is replaced by
the same facet of a uniformly random pole with probability ``text_noise``. A
``misleading_fraction`` of items (``item_misleading``) have title noun and description drawn
from the factors of a random item of another category: their text points at the wrong taste.
Category names are the one part of the text that never lies.

Series
------
``series_fraction`` of the items form series of 2-5 parts ("Title", "Title 2", ...): a random
item and its nearest free items of the same category, numbered by falling popularity (part 1
is the best known). Factors and biases stay as drawn; a series names items that are already
alike, and the event log's chain (below) makes users watch them in order.

Sequential habits (how the event log is sampled, :meth:`SyntheticWorld.simulate`)
--------------------------------------------------------------------------------
A user's impressions, in time order, are a Markov chain over two pieces of state: ``a``, the
user's last clicked item (the *anchor*), and ``n``, the next part of its series if it has one
(a "continue watching" slot that stays until the next click). With ``F = series_follow``,
``w_i = exp(scale * <u, i>)`` and ``s = sequential_strength`` while ``a`` was clicked in this
session (``s * SESSION_CARRY`` once a new session has started without a click), each
impression is

    n                           with probability F                  (when n exists)
    else i ~ N(. | u, a)        with probability s                  (when a exists)
    else i ~ T(. | u)

    T(i | u)    : M = 4 popularity draws X_j ~ q, q_i = pop_i / sum(pop); the draw with the
                  largest scale * <u, X_j> + Gumbel is shown (sampling-importance-resampling
                  of q_i * w_i), so T(i | u) = M q_i w_i E[1 / (w_i + S)], S = sum_{j<M} w_{X_j}
    N(i | u, a) : w_i normalised over the K = 10 nearest items of a (cosine, a excluded): a
                  drift to whatever neighbour suits the user, known or not

and the shown item is clicked with ``p(u, i)``; a click makes it the anchor and sets ``n``.
With ``D = (1 - s) T + s N`` (``D = T`` without an anchor) the state is fixed until the next
click, so the impressions until then are independent trials and the next click is

    P(j | u, a) = (F p(u, n) [j = n] + (1 - F) D(j) p(u, j)) / (F p(u, n) + (1 - F) sum_k D(k) p(u, k))

(``F = 0`` without ``n``; :meth:`SyntheticWorld.next_item_probability`, exact but for a Monte
Carlo estimate of ``E[1 / (w_i + S)]`` and a session boundary falling before the next click).
``click_probability`` stays the static taste part. Worlds built without these fields (a fitted
MovieLens world) have ``s = F = 0`` and no series, so their chain is the static one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rayrec import storage
from rayrec.data.config import SyntheticWorldConfig
from rayrec.data.schema import WORLD_DIR
from rayrec.data.text import item_text as render_item_text

WORLD_ARRAYS, WORLD_META = "world.npz", "world.json"

CANDIDATE_DRAWS = 4  # M: popularity draws per static impression
N_NEIGHBORS = 10  # K: the anchor's neighbourhood for sequential impressions
SESSION_CARRY = 0.5  # the pull of a click from an earlier session, relative to this session's

# One tuple per text axis: (positive pole, negative pole); a pole is
# (themes, moods, settings, title nouns), two words or short phrases each. No word repeats
# across poles, so a bag of words identifies the poles.
_AXES = (
    ((("heists", "con games"), ("clever", "slick"), ("a casino", "a bank vault"), ("Job", "Vault")),
     (("family ties", "homecoming"), ("tender", "warm"), ("a farmhouse", "a small town"), ("Homestead", "Porch"))),
    ((("space travel", "first contact"), ("awe-struck", "cerebral"), ("a starship", "a distant planet"), ("Galaxy", "Orbit")),
     (("royal intrigue", "old empires"), ("stately", "ornate"), ("a royal court", "ancient Rome"), ("Crown", "Throne"))),
    ((("hauntings", "curses"), ("creepy", "dread-soaked"), ("an old mansion", "a foggy moor"), ("Shadow", "Crypt")),
     (("slapstick", "talking animals"), ("funny", "goofy"), ("a toy shop", "a school playground"), ("Pickle", "Puppy"))),
    ((("first love", "a wedding"), ("romantic", "swoony"), ("Paris", "a seaside cafe"), ("Heart", "Kiss")),
     (("war", "survival"), ("brutal", "grim"), ("a battlefield", "the trenches"), ("Battalion", "Trench"))),
    ((("treasure hunts", "quests"), ("rousing", "swashbuckling"), ("a jungle", "the high seas"), ("Treasure", "Compass")),
     (("grief", "memory"), ("melancholy", "quiet"), ("a hospital", "a rainy city"), ("Rain", "Letters"))),
    ((("artificial intelligence", "hackers"), ("cold", "paranoid"), ("a megacorp", "cyberspace"), ("Code", "Protocol")),
     (("wildlife", "the seasons"), ("serene", "lyrical"), ("a mountain valley", "a rainforest"), ("Meadow", "River"))),
    ((("underdogs", "a championship"), ("inspiring", "gritty"), ("a boxing gym", "a stadium"), ("Champion", "Ring")),
     (("a rock band", "stardom"), ("groovy", "soulful"), ("a jazz club", "a concert tour"), ("Rhythm", "Encore"))),
    ((("murder", "a missing person"), ("twisty", "suspenseful"), ("a country manor", "a night train"), ("Clue", "Alibi")),
     (("coming of age", "summer camp"), ("nostalgic", "bittersweet"), ("a high school", "a suburb"), ("Summer", "Yearbook"))),
    ((("superpowers", "a showdown"), ("explosive", "relentless"), ("a skyscraper", "a metropolis"), ("Fury", "Impact")),
     (("politics", "scandal"), ("satirical", "dry"), ("Washington", "a newsroom"), ("Senator", "Headline"))),
    ((("dragons", "magic"), ("enchanting", "epic"), ("an enchanted forest", "a wizard tower"), ("Dragon", "Spell")),
     (("working life", "debt"), ("raw", "understated"), ("a factory", "a diner"), ("Shift", "Wages"))),
    ((("outlaws", "frontier justice"), ("dusty", "laconic"), ("the Wild West", "a desert town"), ("Outlaw", "Canyon")),
     (("street life", "gangs"), ("edgy", "restless"), ("New York", "a housing project"), ("Street", "Block"))),
    ((("natural disasters", "shipwrecks"), ("harrowing", "tense"), ("a sinking ship", "a frozen tundra"), ("Storm", "Avalanche")),
     (("cooking", "road trips"), ("cozy", "breezy"), ("a restaurant kitchen", "the countryside"), ("Recipe", "Journey"))),
    ((("obsession", "madness"), ("unsettling", "hypnotic"), ("an asylum", "a lighthouse"), ("Mirror", "Echo")),
     (("friendship", "a reunion"), ("cheerful", "heartwarming"), ("a college campus", "a beach house"), ("Buddies", "Weekend"))),
    ((("rebellion", "dystopia"), ("bleak", "defiant"), ("a ruined city", "a police state"), ("Ashes", "Uprising")),
     (("princesses", "fairy tales"), ("whimsical", "magical"), ("a castle", "a candy kingdom"), ("Wish", "Slipper"))),
    ((("spies", "double agents"), ("stylish", "cool"), ("Cold War Berlin", "an embassy"), ("Agent", "Cipher")),
     (("science", "true stories"), ("informative", "curious"), ("a laboratory", "the deep ocean"), ("Planet", "Discovery"))),
    ((("pirates", "sea monsters"), ("salty", "rollicking"), ("a pirate ship", "a tropical island"), ("Kraken", "Anchor")),
     (("time travel", "parallel worlds"), ("mind-bending", "puzzling"), ("a time machine", "the far future"), ("Paradox", "Clock"))),
)
N_AXES = len(_AXES)
THEME, MOOD, SETTING, NOUN = range(4)
# VOCABULARY[p][f][v]: pole p = 2 * axis + (1 if negative), facet f (THEME..NOUN), variant v
VOCABULARY = [[pole[f] for f in range(4)] for axis in _AXES for pole in axis]

# The two poles (axis, sign) a category is made of, so its items read like its name.
_SIGNATURES = {
    "Comedy": ((2, -1), (12, -1)), "Drama": ((4, -1), (0, -1)), "Sci-Fi": ((1, 1), (15, -1)),
    "Horror": ((2, 1), (12, 1)), "Romance": ((3, 1), (11, -1)), "Documentary": ((14, -1), (5, -1)),
    "Animation": ((2, -1), (13, -1)), "Thriller": ((14, 1), (8, 1)), "Fantasy": ((9, 1), (4, 1)),
    "Western": ((10, 1), (9, -1)), "Musical": ((6, -1), (3, 1)), "Crime": ((0, 1), (10, -1)),
    "Adventure": ((4, 1), (15, 1)), "Mystery": ((7, 1), (12, 1)), "War": ((3, -1), (11, 1)),
    "Sports": ((6, 1), (7, -1)),
}
CATEGORY_NAMES = tuple(_SIGNATURES)
_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Golden", "Last", "Electric", "Wild", "Broken", "Secret",
    "Midnight", "Lost", "Brave", "Frozen", "Burning", "Little", "Endless", "Quiet", "Final",
    "Distant", "Hollow", "Bright", "Lucky", "Savage", "Gentle", "Iron", "Paper", "Velvet",
)
# Description templates over the slots (mood r1, mood r2, theme r1, setting r3, theme r4).
_TEMPLATES = (
    "A {m1}, {m2} tale of {t1} set in {s}, with {t2}.",
    "{M1} and {m2}: {t1} and {t2} in {s}.",
)
_SLOTS = ((MOOD, 0), (MOOD, 1), (THEME, 0), (SETTING, 2), (THEME, 3))  # (facet, axis rank)


@dataclass
class SyntheticWorld:
    """Latent tastes, item properties and text; ids are the world's own 0-based integers.

    Only the first six fields are required (a fitted world passes just those); the rest
    default to "no text, no series, no sequential habits".
    """

    user_factors: np.ndarray  # (n_users, d) float32
    item_factors: np.ndarray  # (n_items, d) float32
    item_bias: np.ndarray  # (n_items,) float32, log-popularity
    item_category: np.ndarray  # (n_items,) int64 index into category_names
    category_names: list[str]
    titles: list[str]
    scale: float = 2.0
    offset: float = -3.0
    descriptions: list[str] | None = None  # the item text after title and category
    item_series: np.ndarray | None = None  # (n_items,) int64 series id, -1: standalone
    item_part: np.ndarray | None = None  # (n_items,) int64 1-based part number, 0: standalone
    item_misleading: np.ndarray | None = None  # (n_items,) bool: text describes another taste
    text_axes: np.ndarray | None = None  # (d, N_AXES) float32: the vocabulary's directions
    sequential_strength: float = 0.0  # s
    series_follow: float = 0.0  # F
    next_part: np.ndarray = field(init=False, repr=False, compare=False)  # derived, -1: none
    _neighbors: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.n_items
        if self.descriptions is None:
            self.descriptions = [""] * n
        if self.item_series is None:
            self.item_series = np.full(n, -1, dtype=np.int64)
        if self.item_part is None:
            self.item_part = np.zeros(n, dtype=np.int64)
        if self.item_misleading is None:
            self.item_misleading = np.zeros(n, dtype=bool)
        self.next_part = _next_parts(self.item_series, self.item_part)

    @property
    def n_users(self) -> int:
        return int(self.user_factors.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    # --- ground truth ---------------------------------------------------------------------

    def click_probability(self, user_idx: np.ndarray | int, item_idx: np.ndarray | int) -> np.ndarray:
        """True (static) click probability; user_idx and item_idx broadcast against each other."""
        u = self.user_factors[np.asarray(user_idx)]
        v = self.item_factors[np.asarray(item_idx)]
        logits = self.scale * np.sum(u * v, axis=-1) + self.item_bias[np.asarray(item_idx)] + self.offset
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float64)

    def user_probabilities(self, user_idx: int) -> np.ndarray:
        """Click probability of one user for every item, shape (n_items,)."""
        return self.click_probability(np.full(self.n_items, user_idx), np.arange(self.n_items))

    def item_neighbors(self) -> np.ndarray:
        """(n_items, K) the K most cosine-similar other items of each item, nearest first."""
        if self._neighbors is None:
            self._neighbors = _nearest(self.item_factors, min(N_NEIGHBORS, self.n_items - 1))
        return self._neighbors

    def impression_probability(self, user_idx: int, anchor: int = -1,
                               same_session: bool = True) -> np.ndarray:
        """D(. | u, a): which item the user is shown next, series continuation aside.

        ``anchor = -1``: no click yet. ``same_session=False``: the anchor was clicked in an
        earlier session, so it pulls with ``SESSION_CARRY`` of its strength.
        """
        static = self._static_probability(user_idx)
        strength = self.sequential_strength * (1.0 if same_session else SESSION_CARRY)
        if anchor < 0 or strength == 0.0:
            return static
        nb = self.item_neighbors()[anchor]
        near = np.zeros(self.n_items)
        near[nb] = _softmax(self.scale * (self.item_factors[nb] @ self.user_factors[user_idx]))
        return (1.0 - strength) * static + strength * near

    def next_item_probability(self, user_idx: int, last_item: int = -1,
                              same_session: bool = True) -> np.ndarray:
        """P(next click = j | user, last click), shape (n_items,); see the module docstring.

        ``last_item = -1``: no click yet. ``same_session=False``: the impressions until the
        next click come in a later session than ``last_item``'s click.
        """
        d = self.impression_probability(user_idx, last_item, same_session)
        p = self.user_probabilities(user_idx)
        pending = int(self.next_part[last_item]) if last_item >= 0 else -1
        f = self.series_follow if pending >= 0 else 0.0
        # each impression until the next click: the pending part w.p. F, else a draw of D
        out = (1.0 - f) * d * p
        if pending >= 0:
            out[pending] += f * p[pending]
        return out / out.sum()

    def _static_probability(self, user_idx: int, n_mc: int = 8192, n_bins: int = 256) -> np.ndarray:
        """T(i | u) = M q_i w_i E[1 / (w_i + S)], the expectation over binned draws of S."""
        q = self._popularity()
        w = np.exp(self.scale * (self.item_factors.astype(np.float64) @ self.user_factors[user_idx]))
        rng = np.random.default_rng(0)  # fixed: the same answer on every call
        draws = np.minimum(np.searchsorted(np.cumsum(q), rng.random((n_mc, CANDIDATE_DRAWS - 1))),
                           self.n_items - 1)
        s = np.sort(w[draws].sum(axis=1)).reshape(n_bins, -1).mean(axis=1)
        t = CANDIDATE_DRAWS * q * w * np.mean(1.0 / (w[:, None] + s[None, :]), axis=1)
        return t / t.sum()

    def _popularity(self) -> np.ndarray:
        """q: the popularity proposal, exp(2 bias) normalised (bias is 0.5 log pop)."""
        pop = np.exp(2.0 * self.item_bias.astype(np.float64))
        return pop / pop.sum()

    # --- sampling -------------------------------------------------------------------------

    def sample_static(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw of T(. | u) per entry of ``user``: the best of M popularity draws by taste."""
        n = len(user)
        cdf = np.cumsum(self._popularity())
        draws = np.minimum(np.searchsorted(cdf, rng.random((n, CANDIDATE_DRAWS))), self.n_items - 1)
        taste = np.einsum("nd,nkd->nk", self.user_factors[user], self.item_factors[draws])
        pick = np.argmax(self.scale * taste + rng.gumbel(size=(n, CANDIDATE_DRAWS)), axis=1)
        return draws[np.arange(n), pick]

    def sample_near(self, user: np.ndarray, anchor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw of N(. | u, a) per (user, anchor) pair: a neighbour of a, by taste."""
        nb = self.item_neighbors()[anchor]
        taste = np.einsum("nd,nkd->nk", self.user_factors[user], self.item_factors[nb])
        pick = np.argmax(self.scale * taste + rng.gumbel(size=nb.shape), axis=1)
        return nb[np.arange(len(nb)), pick]

    def simulate(self, users: np.ndarray, counts: np.ndarray, session_start: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Run the chain: ``counts[j]`` impressions of ``users[j]``, laid out user after user.

        ``session_start`` (one flag per impression) marks where a session begins: from there
        until the next click the anchor pulls with ``SESSION_CARRY`` of its strength.
        Returns (item, clicked), one entry per impression. The chain is stepped for all
        users at once, position by position, so the loop is as long as the longest history.
        """
        user = np.repeat(users, counts)
        n = len(user)
        item = self.sample_static(user, rng)  # replaced below where the chain says otherwise
        clicked = np.zeros(n, dtype=bool)
        if n == 0:
            return item, clicked
        u_follow, u_near, u_click = rng.random((3, n))
        order = np.argsort(-counts, kind="stable")  # the users still active at step t lead
        first = np.r_[0, np.cumsum(counts)[:-1]][order]
        n_active = np.searchsorted(-counts[order], -np.arange(int(counts.max())), side="left")
        anchor = np.full(len(users), -1, dtype=np.int64)
        pending = np.full(len(users), -1, dtype=np.int64)
        stale = np.zeros(len(users), dtype=bool)  # the anchor was clicked in an earlier session
        for t, m in enumerate(n_active):
            e = first[:m] + t
            stale[:m] |= session_start[e]
            a = anchor[:m]
            strength = np.where(stale[:m], self.sequential_strength * SESSION_CARRY, self.sequential_strength)
            follow = (pending[:m] >= 0) & (u_follow[e] < self.series_follow)
            near = ~follow & (a >= 0) & (u_near[e] < strength)
            shown = item[e]
            if near.any():
                shown[near] = self.sample_near(user[e[near]], a[near], rng)
            shown[follow] = pending[:m][follow]
            c = u_click[e] < self.click_probability(user[e], shown)
            item[e], clicked[e] = shown, c
            anchor[:m] = np.where(c, shown, a)
            stale[:m] &= ~c
            pending[:m] = np.where(c, self.next_part[shown], pending[:m])
        return item, clicked

    # --- text -----------------------------------------------------------------------------

    def item_text(self, item_idx: int) -> str:
        """What the ranker reads: ``Title | Genres: Category | description``."""
        base = render_item_text(self.titles[item_idx], [self.category_names[self.item_category[item_idx]]])
        desc = self.descriptions[item_idx]
        return f"{base} | {desc}" if desc else base

    # --- generation and storage -----------------------------------------------------------

    @classmethod
    def generate(cls, cfg: SyntheticWorldConfig) -> SyntheticWorld:
        """Draw a world deterministically from ``cfg.seed``."""
        # Tastes and popularity: the same draws, in the same order, as before text and series
        # existed, so a seed's click model (and every result computed from it) is unchanged.
        rng = np.random.default_rng(cfg.seed)
        d, n_cat = cfg.latent_dim, min(cfg.n_categories, len(CATEGORY_NAMES))
        names = list(CATEGORY_NAMES[:n_cat])
        # Categories are directions in taste space; items sit near their category's centre.
        centres = _normalize(rng.normal(size=(n_cat, d)))
        item_category = rng.integers(0, n_cat, size=cfg.n_items)
        items = _normalize(centres[item_category] + 0.5 * rng.normal(size=(cfg.n_items, d)) / np.sqrt(d))
        # Each user likes one or two categories, plus personal noise.
        fav = rng.integers(0, n_cat, size=(cfg.n_users, 2))
        mix = rng.uniform(0.5, 1.0, size=(cfg.n_users, 1))
        users = mix * centres[fav[:, 0]] + (1 - mix) * centres[fav[:, 1]]
        users = _normalize(users + 0.4 * rng.normal(size=(cfg.n_users, d)) / np.sqrt(d))
        # Power-law popularity: rank r gets weight r^-exponent, shuffled over items.
        ranks = rng.permutation(cfg.n_items) + 1
        pop = ranks.astype(np.float64) ** (-cfg.popularity_exponent)
        bias = np.log(pop / pop.mean()) * 0.5
        # Series and text are read off that world, from streams of their own.
        series, part = _make_series(np.random.default_rng([cfg.seed, 1]), items, item_category, bias,
                                    cfg.series_fraction)
        text_rng = np.random.default_rng([cfg.seed, 2])
        axes = _text_axes(text_rng, centres, names)
        misleading = _choose(text_rng, cfg.n_items, cfg.misleading_fraction)
        described = _decoys(text_rng, items, item_category, misleading)
        titles, descriptions = _make_text(text_rng, described, axes, cfg.text_noise, series, part)
        return cls(
            user_factors=users.astype(np.float32),
            item_factors=items.astype(np.float32),
            item_bias=bias.astype(np.float32),
            item_category=item_category.astype(np.int64),
            category_names=names,
            titles=titles,
            descriptions=descriptions,
            item_series=series,
            item_part=part,
            item_misleading=misleading,
            text_axes=axes.astype(np.float32),
            sequential_strength=cfg.sequential_strength,
            series_follow=cfg.series_follow,
        )

    def save(self, directory: str | Path) -> None:
        """Write ``world.npz`` (arrays) and ``world.json`` (names, text, chain parameters) to a
        local directory or a URI."""
        arrays = {
            "user_factors": self.user_factors, "item_factors": self.item_factors,
            "item_bias": self.item_bias, "item_category": self.item_category,
            "item_series": self.item_series, "item_part": self.item_part,
            "item_misleading": self.item_misleading,
        }
        if self.text_axes is not None:
            arrays["text_axes"] = self.text_axes
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        storage.write_bytes(storage.join(str(directory), WORLD_ARRAYS), buf.getvalue())
        meta = {"category_names": self.category_names, "titles": self.titles,
                "descriptions": self.descriptions, "scale": self.scale, "offset": self.offset,
                "sequential_strength": self.sequential_strength,
                "series_follow": self.series_follow, "candidate_draws": CANDIDATE_DRAWS,
                "neighbors": N_NEIGHBORS, "session_carry": SESSION_CARRY,
                "link": "p = sigmoid(scale * <user, item> + item_bias + offset)",
                "next_click": "P(j|u,a) ~ F p(u,n)[j=n] + (1-F) D(j) p(u,j); "
                              "D = (1-s) T(.|u) + s N(.|u,a) (rayrec.data.world)"}
        storage.write_text(storage.join(str(directory), WORLD_META), json.dumps(meta))

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticWorld:
        """Read :meth:`save`'s files; worlds saved before text and series load without them."""
        arrays = np.load(io.BytesIO(storage.read_bytes(storage.join(str(directory), WORLD_ARRAYS))))
        meta = json.loads(storage.read_text(storage.join(str(directory), WORLD_META)))

        def opt(name: str) -> np.ndarray | None:
            return arrays[name] if name in arrays.files else None

        return cls(
            user_factors=arrays["user_factors"], item_factors=arrays["item_factors"],
            item_bias=arrays["item_bias"], item_category=arrays["item_category"],
            category_names=meta["category_names"], titles=meta["titles"],
            scale=meta["scale"], offset=meta["offset"], descriptions=meta.get("descriptions"),
            item_series=opt("item_series"), item_part=opt("item_part"),
            item_misleading=opt("item_misleading"), text_axes=opt("text_axes"),
            sequential_strength=meta.get("sequential_strength", 0.0),
            series_follow=meta.get("series_follow", 0.0),
        )


def saved_world(data_dir: str) -> SyntheticWorld | None:
    """The synthetic world that generated a preprocessed dataset (``<data_dir>/world``, local or
    remote), or None when the data is not synthetic."""
    world_dir = storage.join(data_dir, WORLD_DIR)
    return SyntheticWorld.load(world_dir) if storage.is_file(storage.join(world_dir, WORLD_ARRAYS)) else None


# --- generation helpers --------------------------------------------------------------------


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _text_axes(rng: np.random.Generator, centres: np.ndarray, names: list[str]) -> np.ndarray:
    """(d, N_AXES) unit text axes turned so each category centre reads like its name.

    Orthogonal Procrustes: the rotation R (orthonormal columns when d >= N_AXES, orthonormal
    rows otherwise) maximising sum_c <centre_c R, sig_c>, sig_c = the category's two poles as
    a vector over the axes; it is U V^T for the SVD U S V^T of centres^T sig. A little noise
    makes that matrix full rank, so axes no category uses still get a direction of their own.
    """
    sig = np.zeros((len(names), N_AXES))
    for c, name in enumerate(names):
        (k1, s1), (k2, s2) = _SIGNATURES[name]
        sig[c, k1], sig[c, k2] = s1, 0.8 * s2
    target = centres.T @ sig + 0.05 * rng.normal(size=(centres.shape[1], N_AXES))
    u, _, vt = np.linalg.svd(target, full_matrices=False)
    return _normalize((u @ vt).T).T


def _make_series(rng: np.random.Generator, items: np.ndarray, category: np.ndarray,
                 bias: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Group ~fraction of the items into series of 2-5 parts: a random item and its nearest
    free items of the same category, numbered by falling popularity (the first part is the
    best known). Factors and biases are left as they are; series only name what is there.
    """
    n = len(items)
    series, part = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    target, placed = int(round(fraction * n)), 0
    for seed in rng.permutation(n):
        if placed + 2 > target:
            break
        if series[seed] >= 0:
            continue
        free = np.flatnonzero((series < 0) & (category == category[seed]) & (np.arange(n) != seed))
        length = min(int(rng.integers(2, 6)), target - placed, len(free) + 1)
        if length < 2:
            continue
        near = free[np.argsort(-(items[free] @ items[seed]), kind="stable")[: length - 1]]
        group = np.r_[seed, near]
        group = group[np.argsort(-bias[group], kind="stable")]
        series[group], part[group] = series.max() + 1, np.arange(1, length + 1)
        placed += length
    return series, part


def _next_parts(series: np.ndarray, part: np.ndarray) -> np.ndarray:
    """(n_items,) the item that is the next part of each item's series, -1 if none."""
    nxt = np.full(len(series), -1, dtype=np.int64)
    idx = np.flatnonzero(series >= 0)
    idx = idx[np.lexsort((part[idx], series[idx]))]
    same = series[idx[1:]] == series[idx[:-1]]
    nxt[idx[:-1][same]] = idx[1:][same]
    return nxt


def _choose(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """A bool mask with exactly round(fraction * n) random entries set."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(fraction * n))]] = True
    return mask


def _decoys(rng: np.random.Generator, items: np.ndarray, category: np.ndarray,
            misleading: np.ndarray) -> np.ndarray:
    """The factors each item's text describes: its own, or for misleading items another
    category's item (any other item when the world has one category)."""
    described = items.copy()
    for i in np.flatnonzero(misleading):
        others = np.flatnonzero(category != category[i])
        if len(others) == 0:
            others = np.flatnonzero(np.arange(len(items)) != i)
        if len(others):
            described[i] = items[others[rng.integers(len(others))]]
    return described


def _make_text(rng: np.random.Generator, factors: np.ndarray, axes: np.ndarray, noise: float,
               series: np.ndarray, part: np.ndarray) -> tuple[list[str], list[str]]:
    """Titles and descriptions from the poles of each row's strongest text axes."""
    n = len(factors)
    proj = factors @ axes
    ranked = np.argsort(-np.abs(proj), axis=1, kind="stable")[:, :4]
    poles = 2 * ranked + (np.take_along_axis(proj, ranked, axis=1) < 0)  # (n, 4)
    n_slots = len(_SLOTS) + 1  # the title noun is the last slot, from r1
    pole = np.concatenate([poles[:, [r for _, r in _SLOTS]], poles[:, :1]], axis=1)
    random = rng.random((n, n_slots)) < noise
    pole[random] = rng.integers(0, 2 * N_AXES, size=int(random.sum()))
    variant = rng.integers(0, 2, size=(n, n_slots))
    template = rng.integers(0, len(_TEMPLATES), size=n)
    adjective = rng.integers(0, len(_ADJECTIVES), size=n)
    the = rng.random(n) < 0.5
    titles, descriptions, seen = [], [], set()
    for i in range(n):
        words = [VOCABULARY[pole[i, j]][facet][variant[i, j]] for j, (facet, _) in enumerate(_SLOTS)]
        m1, m2, t1, s, t2 = words
        descriptions.append(_TEMPLATES[template[i]].format(m1=m1, M1=m1.capitalize(), m2=m2,
                                                           t1=t1, s=s, t2=t2))
        noun = VOCABULARY[pole[i, -1]][NOUN][variant[i, -1]]
        base = f"{'The ' if the[i] else ''}{_ADJECTIVES[adjective[i]]} {noun}"
        titles.append(_unique(base, i, seen))
    # Sequels carry part 1's title: "Midnight Vault", "Midnight Vault 2", ...
    for i in np.flatnonzero(part > 1):
        first = np.flatnonzero((series == series[i]) & (part == 1))[0]
        titles[i] = f"{titles[first]} {part[i]}"
    return titles, descriptions


def _unique(base: str, i: int, seen: set[str]) -> str:
    """A title not used yet: 'Golden Comet', else another adjective for the same noun ('Iron
    Comet'), else '... (1983)', else '... #i'. No 'II' or 'Returns': those would read as
    sequels, and only series items are sequels."""
    words = base.split(" ")
    adjective = words[-2]
    candidates = [base] + [" ".join([*words[:-2], a, words[-1]]) for a in _ADJECTIVES if a != adjective]
    candidates += [f"{base} ({1970 + i % 55})", f"{base} #{i}"]
    title = next((t for t in candidates if t not in seen), f"{base} #{i}")
    seen.add(title)
    return title


def _nearest(factors: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k most cosine-similar other rows, nearest first."""
    n = len(factors)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    f = _normalize(factors.astype(np.float32))
    out = np.empty((n, k), dtype=np.int64)
    block = max(1, 2**24 // max(n, 1))  # ~64 MB of similarities at a time
    for lo in range(0, n, block):
        sims = f[lo:lo + block] @ f.T
        rows = np.arange(sims.shape[0])
        sims[rows, lo + rows] = -np.inf
        top = np.argpartition(sims, -k, axis=1)[:, -k:]  # the k largest, unordered
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[lo:lo + block] = np.take_along_axis(top, order, axis=1)
    return out
