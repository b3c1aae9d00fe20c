"""RecBole 1.2.1 on numpy 2: the code paths that read the aliases numpy 2 removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cprec_recbole.compat import NUMPY2_ALIASES, no_argv


def test_recbole_config_and_metrics_run_on_the_restored_numpy_aliases(tiny_data: Path):
    """RecBole's Config re-creates np.float, np.long... from np.float_, np.complex_ and
    np.unicode_ (gone in numpy 2: an AttributeError without the aliases); its MRR, MAP and NDCG
    then build their arrays with dtype=np.float."""
    from recbole.config import Config
    from recbole.evaluator.metrics import MAP, MRR, NDCG

    with no_argv():
        config = Config(
            model="SASRec",
            dataset="Tiny",
            config_dict={
                "data_path": str(tiny_data),
                "topk": [1, 2],
                "train_neg_sample_args": None,
            },
        )
    assert {name: getattr(np, name) for name in NUMPY2_ALIASES} == NUMPY2_ALIASES
    assert np.float is np.float64 and np.long is np.int_
    hits = np.array([[False, True, False], [True, False, False]])
    assert MRR(config).metric_info(hits).tolist() == [[0, 0.5, 0.5], [1, 1, 1]]
    assert MAP(config).metric_info(hits, np.array([1, 1])).tolist() == [[0, 0.5, 0.5], [1, 1, 1]]
    ndcg = MRR(config).topk_result("ndcg", NDCG(config).metric_info(hits, np.array([1, 1])))
    assert ndcg == {"ndcg@1": 0.5, "ndcg@2": round((1 / np.log2(3) + 1) / 2, 4)}
