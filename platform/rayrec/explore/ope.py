"""Off-policy evaluation of slate policies: IPS, self-normalised IPS, direct method, doubly robust.

Consistent with ``policies.py``: a logged propensity is the probability of the item at its
slot given the earlier slots, so the product over a request's rows is the probability of
the whole ordered slate. A *decision* is one request: reward = sum of its items' rewards,
importance weight w = prod(target propensities) / prod(logging propensities) (optionally
clipped at ``clip``). With V(pi) = E[sum of clicks of the slate pi shows]:

    IPS   = mean(w r)                 SNIPS = sum(w r) / sum(w)
    DM    = mean(sum_c q_pi(c) rhat(c))  (q_pi = target's probability that candidate c is shown)
    DR    = mean(DM_i + w (r - sum_{shown} rhat))

IPS and DR are unbiased for any logging policy with full support (DR for any reward model,
because its correction has mean E_pi[r - rhat]); DM is as good as ``rhat``. Confidence
intervals: percentile bootstrap over decisions (:mod:`rayrec.evaluation.bootstrap`), refitting
the reward model in every replicate (the resample counts are its sample weights).
DM/DR need the target's candidate probabilities (``candidates`` frame); the endpoint log
holds only shown items, so it supports IPS/SNIPS unless a candidates frame is supplied.
"""

from __future__ import annotations

import copy
import itertools
import math
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rayrec.data.schema import FEEDBACK_COLUMNS, IMPRESSION_COLUMNS
from rayrec.evaluation.bootstrap import bootstrap, percentile_interval


def join_events(impressions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Impressions with a ``reward`` column: feedback summed per (request_id, item_idx), 0 if none."""
    missing = set(IMPRESSION_COLUMNS) - set(impressions.columns)
    if missing:
        raise ValueError(f"impressions lack columns {sorted(missing)}")
    missing = set(FEEDBACK_COLUMNS) - set(feedback.columns)
    if missing:
        raise ValueError(f"feedback lacks columns {sorted(missing)}")
    fb = feedback.groupby(["request_id", "item_idx"], as_index=False)["reward"].sum()
    out = impressions.drop(columns=["reward"], errors="ignore").merge(
        fb, on=["request_id", "item_idx"], how="left")
    out["reward"] = out["reward"].fillna(0.0).astype(np.float64)
    return out


class TabularRewardModel:
    """rhat(context, item): the (context, item) mean shrunk to the item mean, shrunk to the
    global mean, each with ``shrinkage`` pseudo-observations. Context = user_idx."""

    def __init__(self, shrinkage: float = 2.0):
        self.shrinkage = shrinkage

    def fit(self, context, item, reward, weight=None) -> TabularRewardModel:
        context, item = np.asarray(context, np.int64), np.asarray(item, np.int64)
        reward = np.asarray(reward, np.float64)
        weight = np.ones(len(reward)) if weight is None else np.asarray(weight, np.float64)
        self.global_mean = float((weight * reward).sum() / max(weight.sum(), 1e-12))
        self.n_items = int(item.max()) + 1 if len(item) else 1
        n_i = np.bincount(item, weight, self.n_items)
        s_i = np.bincount(item, weight * reward, self.n_items)
        m = self.shrinkage
        self.item_mean = (s_i + m * self.global_mean) / (n_i + m)
        cells, inv = np.unique(self._cell(context, item), return_inverse=True)
        self.cells = cells
        self.cell_n = np.bincount(inv, weight, len(cells))
        self.cell_s = np.bincount(inv, weight * reward, len(cells))
        return self

    def _cell(self, context, item):
        return (np.asarray(context, np.int64) + 1) * (2**31) + np.asarray(item, np.int64)

    def predict(self, context, item) -> np.ndarray:
        item = np.asarray(item, np.int64)
        base = np.where(item < self.n_items, self.item_mean[np.minimum(item, self.n_items - 1)],
                        self.global_mean)
        key = self._cell(context, item)
        pos = np.clip(np.searchsorted(self.cells, key), 0, max(len(self.cells) - 1, 0))
        hit = self.cells[pos] == key if len(self.cells) else np.zeros(len(key), bool)
        n = np.where(hit, self.cell_n[pos], 0.0)
        s = np.where(hit, self.cell_s[pos], 0.0)
        return (s + self.shrinkage * base) / (n + self.shrinkage)


def _decision_ids(request_id: pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(request_id)
    return codes.astype(np.int64), len(uniques)


@dataclass
class Decisions:
    """A log as decisions: per decision i its importance weight ``w[i]`` and reward ``r[i]``;
    per shown row its decision ``dec`` and (user, item, reward); optionally the target's
    candidates (decision, user, item, inclusion probability) and a reward model to fit."""

    dec: np.ndarray
    n: int
    w: np.ndarray
    r: np.ndarray
    shown: tuple[np.ndarray, np.ndarray, np.ndarray]
    cand: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    model: TabularRewardModel

    def direct(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reward model fit on replicate ``c`` (its counts as sample weights): per decision,
        the target's expected reward over its candidates and the model's reward of what was shown."""
        u, i, r = self.shown
        m = copy.copy(self.model).fit(u, i, r, weight=c[self.dec])
        cd, cu, ci, inc = self.cand
        return np.bincount(cd, inc * m.predict(cu, ci), self.n), np.bincount(self.dec, m.predict(u, i), self.n)


class Estimator:
    """One off-policy estimator of V(pi) per decision. ``value(d, c, fitted)``: its estimate on
    the bootstrap replicate whose decision counts are ``c`` (all ones: the point estimate);
    ``fitted``: the replicate's reward model outputs when ``needs_model``."""

    name = ""
    needs_model = False

    def value(self, d: Decisions, c: np.ndarray, fitted: tuple[np.ndarray, np.ndarray] | None) -> float:
        raise NotImplementedError


class InverseProbabilityWeighting(Estimator):
    """IPS = mean_i(w_i r_i): unbiased for any logging policy with full support (Horvitz &
    Thompson 1952; for slates with the product of slot propensities, Swaminathan et al. 2017)."""

    name = "ips"

    def value(self, d, c, fitted):
        return float((c * d.w * d.r).sum() / c.sum())


class SelfNormalizedIPS(Estimator):
    """SNIPS = sum_i(w_i r_i) / sum_i(w_i): biased but consistent, much lower variance when the
    weights are large (Swaminathan & Joachims 2015)."""

    name = "snips"

    def value(self, d, c, fitted):
        return float((c * d.w * d.r).sum() / max((c * d.w).sum(), 1e-300))


class DirectMethod(Estimator):
    """DM = mean_i sum_c q_pi(c) rhat(c): the reward model's value of what pi would show; as good
    as rhat (Dudik et al. 2011)."""

    name = "dm"
    needs_model = True

    def value(self, d, c, fitted):
        dm_target, _ = fitted
        return float((c * dm_target).sum() / c.sum())


class DoublyRobust(Estimator):
    """DR = mean_i(DM_i + w_i (r_i - sum_shown rhat)): unbiased for any reward model (its
    correction has mean E_pi[r - rhat]) and lower variance than IPS when rhat is good (Dudik
    et al. 2011)."""

    name = "dr"
    needs_model = True

    def value(self, d, c, fitted):
        dm_target, dm_logged = fitted
        return float((c * (dm_target + d.w * (d.r - dm_logged))).sum() / c.sum())


ESTIMATOR_CLASSES: tuple[type[Estimator], ...] = (InverseProbabilityWeighting, SelfNormalizedIPS, DirectMethod,
                                                  DoublyRobust)
ESTIMATORS = tuple(e.name for e in ESTIMATOR_CLASSES)


def evaluate(
    shown: pd.DataFrame, target: str = "target_propensity", candidates: pd.DataFrame | None = None,
    inclusion: str = "target_inclusion", clip: float | None = None, n_boot: int = 200,
    alpha: float = 0.05, seed: int = 0, reward_model: TabularRewardModel | None = None,
) -> dict[str, dict[str, float]]:
    """Estimate the target policy's value per decision with each estimator and a bootstrap CI.

    ``shown``: one row per shown item with request_id, user_idx, item_idx, propensity
    (logging), ``target`` (the target policy's propensity for that item at that slot) and
    reward. ``candidates`` (optional, for DM/DR): request_id, user_idx, item_idx and
    ``inclusion`` (the target's probability of showing that candidate in the slate).
    Returns {estimator: {"estimate", "lo", "hi", "se", "n"}}.
    """
    need = {"request_id", "user_idx", "item_idx", "propensity", target, "reward"}
    if missing := need - set(shown.columns):
        raise ValueError(f"shown rows lack columns {sorted(missing)}")
    if (shown["propensity"] <= 0).any() or (shown["propensity"] > 1 + 1e-9).any():
        raise ValueError("logging propensities must be in (0, 1]")
    dec, n = _decision_ids(shown["request_id"])
    log_p = np.exp(np.bincount(dec, np.log(shown["propensity"].to_numpy(np.float64)), n))
    tgt = shown[target].to_numpy(np.float64)
    tgt_p = np.exp(np.bincount(dec, np.log(np.maximum(tgt, 1e-300)), n)) * (np.bincount(dec, tgt <= 0, n) == 0)
    w = tgt_p / log_p
    if clip is not None:
        w = np.minimum(w, clip)
    r = np.bincount(dec, shown["reward"].to_numpy(np.float64), n)
    cand = None
    if candidates is not None:
        lookup = dict(zip(pd.unique(shown["request_id"]), range(n), strict=True))
        cdec = candidates["request_id"].map(lookup)
        keep = cdec.notna().to_numpy()
        cand = (cdec.to_numpy()[keep].astype(np.int64), candidates["user_idx"].to_numpy()[keep],
                candidates["item_idx"].to_numpy()[keep], candidates[inclusion].to_numpy(np.float64)[keep])
    d = Decisions(dec, n, w, r, tuple(shown[c].to_numpy() for c in ("user_idx", "item_idx", "reward")), cand,
                  reward_model or TabularRewardModel())
    estimators = [e() for e in ESTIMATOR_CLASSES if cand is not None or not e.needs_model]

    def stats(c: np.ndarray) -> dict[str, float]:
        fitted = d.direct(c) if cand is not None else None  # one reward-model fit per replicate
        return {e.name: e.value(d, c, fitted) for e in estimators}

    point = stats(np.ones(n))
    boots = bootstrap(stats, n, n_boot, seed)
    result = {}
    for name, est in point.items():
        b = np.array([x[name] for x in boots])
        lo, hi = percentile_interval(b, alpha)
        result[name] = {"estimate": float(est), "lo": lo, "hi": hi,
                        "se": float(b.std(ddof=1)), "n": n}
    return result


# ---- simulated logs with known truth ----------------------------------------------------------

def inclusion_probabilities(policy, req, k: int, n_draws: int = 200, seed: int = 0) -> np.ndarray:
    """P(candidate in the slate) under ``policy``: exact for non-sampled policies (one slot, or
    enumerating <= 720 ordered slates), else Monte-Carlo over ``n_draws`` slates from a copy of
    the policy (its state is untouched)."""
    n = len(req.arms)
    k = min(k, n)
    if k == 1 and not policy.sampled:
        return np.array([policy.propensities(req.scores, [c], req.features, req.arms, req.embeddings)[0]
                         for c in range(n)])
    if not policy.sampled and math.perm(n, k) <= 720:  # small: enumerate every ordered slate
        incl = np.zeros(n)
        for slate in itertools.permutations(range(n), k):
            s = np.array(slate)
            incl[s] += np.prod(policy.propensities(req.scores, s, req.features, req.arms, req.embeddings))
        return incl
    clone = copy.deepcopy(policy)
    clone.rng = np.random.default_rng(seed)
    counts = np.zeros(n)
    for _ in range(n_draws):
        counts[clone.select(req.scores, k, req.features, req.arms, req.embeddings).indices] += 1
    return counts / n_draws


def true_value(env, policy, k: int, n_requests: int, seed: int = 0, n_draws: int = 200) -> float:
    """V(policy) = E[sum of true click probabilities of its slate], over fresh requests."""
    rng = np.random.default_rng(seed)
    vals = []
    for t in range(n_requests):
        req = env.request(rng)
        vals.append(inclusion_probabilities(policy, req, k, n_draws, seed + t) @ req.probs)
    return float(np.mean(vals))


def simulate_log(
    env, logging_policy, n_requests: int, k: int, targets: dict | None = None, seed: int = 0,
    inclusion_draws: int = 200,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A logged dataset from a fixed logging policy in ``env``.

    Returns (shown, candidates): shown has the event-log impression columns plus reward and,
    per target policy name, ``target_propensity_<name>``; candidates has request_id,
    user_idx, item_idx and ``target_inclusion_<name>`` for DM/DR.
    """
    rng = np.random.default_rng(seed)
    targets = targets or {}
    shown, cands = [], []
    for t in range(n_requests):
        req = env.request(rng)
        slate = logging_policy.select(req.scores, k, req.features, req.arms, req.embeddings)
        r = env.rewards(req, slate.indices, rng)
        rid = uuid.UUID(int=int(rng.integers(2**63))).hex
        rows = {
            "request_id": rid, "timestamp": float(t), "user_id": str(req.user_idx),
            "user_idx": req.user_idx, "policy": logging_policy.name,
            "position": np.arange(len(slate.indices)), "item_idx": req.arms[slate.indices],
            "item_id": [str(i) for i in req.arms[slate.indices]], "score": req.scores[slate.indices],
            "propensity": slate.propensities, "n_candidates": len(req.arms), "degraded": False,
            "reward": r,
        }
        c = {"request_id": rid, "user_idx": req.user_idx, "item_idx": req.arms}
        for name, pol in targets.items():
            rows[f"target_propensity_{name}"] = pol.propensities(
                req.scores, slate.indices, req.features, req.arms, req.embeddings)
            c[f"target_inclusion_{name}"] = inclusion_probabilities(pol, req, k, inclusion_draws, seed + t)
        shown.append(pd.DataFrame(rows))
        cands.append(pd.DataFrame(c))
    return pd.concat(shown, ignore_index=True), pd.concat(cands, ignore_index=True)
