"""Report sections on recommendation quality: offline evaluation, exploration, off-policy.

Like :mod:`rayrec.report.sections`: each takes a stage's result dict and returns markdown
lines (heading, one sentence on what it shows, tables, figure links).
"""

from __future__ import annotations

from typing import Any

from rayrec.evaluation.bootstrap import bootstrap, percentile_interval
from rayrec.report.markdown import ci, image, num, table

_BOOTSTRAP = 1000


def main_k(evaluation: dict[str, Any]) -> int:
    ks = evaluation.get("protocol", {}).get("ks") or [10]
    return 10 if 10 in ks else ks[-1]


def model_rows(evaluation: dict[str, Any], per_user=None) -> tuple[list[str], list[dict[str, Any]]]:
    """(headline metrics, one row per model best first) with each headline metric's 95%
    bootstrap CI over users when the per-user results (a DataFrame) are at hand."""
    k = main_k(evaluation)
    headline = [f"ndcg@{k}", f"hr@{k}"]
    rows = []
    for name, m in sorted(evaluation.get("models", {}).items(), key=lambda kv: -kv[1].get(headline[0], 0)):
        row = {"model": name, **m}
        for metric in headline:
            values = None if per_user is None else per_user.loc[per_user["model"] == name, metric].to_numpy(float)
            if values is not None and len(values) > 1:
                means = bootstrap(lambda c, v=values: float(c @ v / c.sum()), len(values), _BOOTSTRAP)
                row[f"{metric}_ci"] = percentile_interval(means)
        rows.append(row)
    return headline, rows


def evaluation(result: dict[str, Any], per_user, plot: str | None) -> list[str]:
    p = result.get("protocol", {})
    headline, rows = model_rows(result, per_user)
    full = p.get("candidates") == "full"
    if p.get("protocol") == "new_items":
        n = p.get("new_items") or {}
        lines = ["", "## New items", "",
                 (f"The newest {num(n.get('held_out_items'))} items ({n.get('fraction', 0):.0%} of those with "
                  "an interaction, by first interaction) were held out of every training stage, their text "
                  f"cut to what exists at release. For {num(p.get('users'))} users, the first contact with "
                  "one is ranked against every item the user has not seen, held-out items included (a miss "
                  "scores 0); `new_share` is the share of the top-10 given to held-out items. Intervals "
                  "are 95% bootstrap CIs over users."), ""]
    else:
        lines = ["", "## Offline evaluation", "",
                 (f"How well each system ranks the held-out item of {num(p.get('users'))} {p.get('split')} "
                  "users against " + ("every unseen catalog item (a miss scores 0)" if full
                                      else f"{p.get('candidates')} candidates")
                  + "; intervals are 95% bootstrap CIs over users."), ""]
    extra = [c for c in ("mrr", *(k for k in (rows[0] if rows else {}) if k.startswith(("recall@", "new_share@"))),
                         *(k for k in (rows[0] if rows else {}) if k.startswith(("coverage@", "novelty@"))),
                         "ms_per_user") if rows and c in rows[0]]
    lines += table(["model", *[f"{m} (95% CI)" for m in headline], *[c.replace("ms_per_user", "ms/user") for c in extra]],
                   [[r["model"], *[f"{num(r.get(m))} {ci(r.get(f'{m}_ci'))}".strip() for m in headline],
                     *[num(r.get(c), 1 if c == "ms_per_user" else 4) for c in extra]] for r in rows])
    comparisons = result.get("comparisons") or {}
    if comparisons:
        lines += ["", "Paired differences on the same users: a CI that excludes 0 is a real difference.", ""]
        lines += table(["comparison", "metric", "difference", "95% CI", "better for", "worse for"],
                       [[name.replace("_vs_", " vs "), c.get("metric"), f"{c.get('delta', float('nan')):+.4f}",
                         ci(c.get("ci95"), signed=True), c.get("wins"), c.get("losses")]
                        for name, c in comparisons.items()])
    lines += seeds(result.get("seeds"))
    return lines + image("quality against the baselines", plot)


def seeds(result: dict[str, Any] | None) -> list[str]:
    """The evaluation over several seeds (rayrec.recipes.seeds): per seed, mean ± sd, verdicts."""
    if not result or result.get("n", 1) < 2:
        return []
    per_seed = result["per_seed"]
    lines = ["", f"### Over {result['n']} seeds", "",
             (f"Every trained system retrained per seed ({result.get('note')}); NDCG@10 per seed, mean ± sd "
              "over seeds. A comparison is above or below only when every seed's paired 95% CI excludes 0 "
              "on that side, else on par."), ""]
    lines += table(["model", *[f"seed {s['retriever_seed']}" for s in per_seed], "mean ± sd"],
                   [[m, *[num(s["models"][m]["ndcg@10"]) for s in per_seed], _pm(v["ndcg@10"])]
                    for m, v in sorted(result["mean_sd"].items(), key=lambda kv: -(kv[1]["ndcg@10"][0] or 0))])
    lines += [""]
    lines += table(["comparison", "difference (mean ± sd)", *[f"95% CI, seed {s['retriever_seed']}" for s in per_seed],
                    "verdict"],
                   [[name.replace("_vs_", " vs "), _pm(c["delta"], signed=True),
                     *[ci(x, signed=True) for x in c["ci95_per_seed"]], c["verdict"]]
                    for name, c in result["comparisons"].items()])
    return lines


def _pm(mean_sd: list[float | None], signed: bool = False) -> str:
    mean, sd = mean_sd
    if mean is None:
        return "n/a"
    head = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return head if sd is None else f"{head} ± {sd:.4f}"


def item_tower(result: dict[str, Any]) -> list[str]:
    """The LoRA item tower's validation against the frozen tower it started from, and whether it
    is served (rayrec.itemtower.trainer publishes it only when it is better)."""
    rows = [[name, num(result.get(f"start_{key}")), num(result.get(key))]
            for name, key in (("new and warm targets", "valid_ndcg@10"), ("new targets", "valid_new_ndcg@10"),
                              ("warm targets", "valid_warm_ndcg@10"),
                              ("warm targets' top-10 share of text items", "valid_warm_new_share@10"))]
    published = not str(result.get("tower", "")).startswith("not published")
    return (["", (f"The LoRA item tower, validated on {num(result.get('valid_items'))} warm items held out of its "
                  "tuning (read from text among the warm catalog, beside as many warm targets; NDCG@10): "
                  + ("better than the frozen tower, so new items are served from it."
                     if published else "no better than the frozen tower, so it is not served; new items "
                     "keep the retriever's frozen text part.")), ""]
            + table(["validation", "frozen tower", "tuned tower"], rows))


def exploration(result: dict[str, Any], regret_plot: str | None, tradeoff_plot: str | None) -> list[str]:
    c = result.get("config", {})
    policies = result.get("policies", {})
    lines = ["", "## Exploration experiment", "",
             f"Bandit policies choosing slates of {c.get('slate_size')} in the `{result.get('environment')}` "
             f"environment ({c.get('seeds')} seeds x {c.get('horizon')} rounds): the clicks they earn "
             "(CTR), the clicks they lose to the best slate (regret) and how varied their slates are; "
             "intervals are 95% over seeds.", ""]
    rows = []
    for name, s in policies.items():
        reg = s.get("cum_regret")
        slope = s.get("regret_slope")
        rows.append([name, _mean_ci(s.get("ctr"), 3),
                     f"{reg[0][-1]:.1f} ± {reg[1][-1]:.1f}" if reg else "n/a (replay)",
                     f"{slope['ratio']:.2f}" if slope else "n/a",
                     *[_mean_ci(s.get(k), 3) for k in ("catalog_coverage", "intra_list_diversity", "novelty")]])
    lines += table(["policy", "CTR", "cumulative regret", "regret slope, last / first quarter", "catalog coverage",
                    "intra-list diversity", "novelty"], rows)
    arrivals = {n: s for n, s in policies.items() if "new_impression_share" in s}
    if arrivals:
        lines += ["", f"Items released during the horizon ({c.get('arrival_fraction', 0):.0%} of the catalog, over "
                  f"the first {c.get('arrival_window', 0):.0%} of the rounds) are scored by the model from "
                  "their text alone: how much each policy shows them, how many of them it finds a click "
                  "for, and how soon after release.", ""]
        lines += table(["policy", "impressions to new items", "new items in the best slates", "new items clicked",
                        "rounds to first click (median)"],
                       [[n, *[_mean_ci(s.get(k), 3 if k != "rounds_to_first_click" else 0)
                              for k in ("new_impression_share", "new_best_share", "new_items_clicked",
                                        "rounds_to_first_click")]]
                        for n, s in arrivals.items()])
    paired = {n: d for n, d in (result.get("vs_greedy") or {}).items() if "ci95" in d}
    if paired:
        lines += ["", "Cumulative regret minus greedy's, paired per seed (the same requests and clicks); "
                  "negative is better than greedy, and a CI that excludes 0 says so beyond seed noise.", ""]
        lines += table(["policy", "per seed", "mean ± sd", "95% CI"],
                       [[n, ", ".join(f"{x:.0f}" for x in d["per_seed"]), f"{d['mean']:.0f} ± {d['sd']:.0f}",
                         f"[{d['ci95'][0]:.0f}, {d['ci95'][1]:.0f}]"] for n, d in paired.items()])
    return (lines + image("cumulative regret per policy", regret_plot)
            + image("relevance against diversity per policy", tradeoff_plot))


def _mean_ci(stat: dict[str, float] | None, digits: int) -> str:
    return "n/a" if not stat else f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def off_policy(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Off-policy estimates from the endpoint's log", "",
             f"The value (clicks per slate) of the logging policy (`{result.get('logging_policy')}`) and of "
             f"greedy, estimated from {num(result.get('decisions'))} logged requests alone, beside the "
             "true value from the click model: an estimator is trustworthy when its CI covers it.", ""]
    rows = []
    for policy in ("logging", "greedy"):
        entry = result.get(policy) or {}
        truth = entry.get("true_value")
        for estimator, e in (entry.get("estimates") or {}).items():
            covered = None if truth is None else bool(e["lo"] <= truth <= e["hi"])
            rows.append([policy, estimator, num(e.get("estimate")), ci((e["lo"], e["hi"])),
                         num(truth), num(covered)])
    return lines + table(["policy", "estimator", "estimate", "95% CI", "true value", "CI covers truth"], rows,
                         "llrrrl")
