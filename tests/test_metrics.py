import math

import numpy as np
import pytest
from rayrec import metrics as m


def test_ranking_metrics_single_relevant() -> None:
    ranked = [5, 3, 9, 1]
    assert m.hit_rate_at_k(ranked, 9, 2) == 0.0
    assert m.hit_rate_at_k(ranked, 9, 3) == 1.0
    assert m.ndcg_at_k(ranked, 9, 10) == pytest.approx(1 / math.log2(4))
    assert m.ndcg_at_k(ranked, 5, 10) == 1.0
    assert m.reciprocal_rank(ranked, 1) == 0.25
    assert m.reciprocal_rank(ranked, 42) == 0.0


def test_auc_and_rank() -> None:
    assert m.auc(np.array([3.0, 1.0, 2.0]), np.array([1, 0, 0])) == 1.0
    assert m.auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5
    assert m.rank_of_positive(np.array([0.5, 0.9, 0.1]), 0) == 1
    assert m.rank_of_positive(np.array([0.5, 0.5]), 0) == 1  # ties count against the positive


def test_beyond_accuracy() -> None:
    same = np.ones((3, 4))
    assert m.intra_list_diversity(same) == pytest.approx(0.0)
    orth = np.eye(3)
    assert m.intra_list_diversity(orth) == pytest.approx(1.0)
    assert m.category_coverage(["a", "b", "a"], 4) == 0.5
    assert m.catalog_coverage([[0, 1], [1, 2]], 10) == 0.3
    pop = np.array([10, 1])
    assert m.novelty([1], pop, 10) > m.novelty([0], pop, 10)
