"""Does grounding the retriever in text cost anything on the warm protocol?

    python benchmarks/bench_text_grounded_warm.py --config configs/ml-latest-small.yaml \
        [--set KEY=VALUE ...] --out text_grounded_warm.json

On a run directory where `rayrec main` (or preprocess, index, train-retriever) has run: trains
the text-grounded retriever (``retriever.text_init: true``, the run's other retriever settings,
the new-item protocol's) on the run's own data into ``<run_dir>/retriever_text`` (reused when
there), then ranks the full catalog for every test user with both it and the run's ID-only
retriever (rayrec.evaluation.fullcatalog, the warm protocol `rayrec evaluate` runs) and writes
the paired NDCG@10 difference. #21's bar: its 95% CI lower bound above -0.003.
"""

from __future__ import annotations

import argparse
import json

from rayrec import storage
from rayrec.config import load_config
from rayrec.runtime import init_ray


def main() -> None:
    from rayrec.evaluation.fullcatalog import run_full_catalog
    from rayrec.evaluation.systems import load_seq_retriever
    from rayrec.seqrec.scorer import SeqRetriever
    from rayrec.seqrec.trainer import run_retriever_training

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.config, overrides)
    init_ray(cfg.ray)
    text_cfg = load_config(args.config, overrides | {"retriever.text_init": True,
                                                      "retriever.out": cfg.path("retriever_text")})
    trained = None
    if not storage.is_dir(text_cfg.retriever_model_dir):
        trained = run_retriever_training(text_cfg)
    eval_cfg = load_config(args.config, overrides | {"evaluate.out": cfg.path("eval_text_grounded"),
                                                     "evaluate.rank_retrieved": False,
                                                     "evaluate.baselines": False})
    result = run_full_catalog(eval_cfg, {"retriever": load_seq_retriever(cfg),
                                         "text_retriever": SeqRetriever(text_cfg.retriever_model_dir)},
                              pairs=[("text_retriever", "retriever")])
    out = {"models": {m: {k: v for k, v in s.items() if k in ("ndcg@10", "hr@10")} for m, s in result["models"].items()},
           "comparison": result["comparisons"]["text_retriever_vs_retriever"],
           "users": result["protocol"]["users"], "training": trained,
           "config": {"file": args.config, "overrides": overrides, "run_dir": cfg.run_dir}}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    c = out["comparison"]
    print(f"{out['users']} users: text-grounded {out['models']['text_retriever']['ndcg@10']:.4f} vs ID-only "
          f"{out['models']['retriever']['ndcg@10']:.4f} NDCG@10, paired difference {c['delta']:+.4f} "
          f"CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")


if __name__ == "__main__":
    main()
