"""``rayrec evaluate``: the protocol ``evaluate.candidates`` names.

  full                          the headline: every system ranks the whole unseen catalog
                                (:mod:`rayrec.evaluation.fullcatalog`)
  sampled, retrieval, popularity  the ranker's re-ranking diagnostics on fixed candidate sets
                                (:mod:`rayrec.evaluation.sampled`)

Both share the ranker's scoring (:mod:`rayrec.evaluation.scoring`) and the summary, paired
comparisons and report (:mod:`rayrec.evaluation.summary`).
"""

from __future__ import annotations

from typing import Any

from rayrec.evaluation.fullcatalog import run_full_catalog
from rayrec.evaluation.sampled import run_sampled


def run_evaluation(cfg) -> dict[str, Any]:
    """Evaluate on the held-out split (``evaluate.split``) and write the report to ``cfg.eval_dir``."""
    return run_full_catalog(cfg) if cfg.evaluate.candidates == "full" else run_sampled(cfg)
