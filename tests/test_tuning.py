"""#24: `rayrec tune` chooses the retriever's settings on the validation split only (Ray Tune
over the retriever's own Ray Train runs), and records the space, budget, trials and choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rayrec.config import load_config
from rayrec.data import schema
from rayrec.errors import ConfigError
from test_seqrec import write_cyclic_dataset


def test_the_search_space_names_tunable_retriever_fields():
    with pytest.raises(ConfigError, match=r"search_space.dimension: not a tunable retriever field"):
        load_config(None, {"tune.search_space": {"dimension": [64]}})
    with pytest.raises(ConfigError, match=r"search_space.run_name"):
        load_config(None, {"tune.search_space": {"run_name": ["a"]}})
    with pytest.raises(ConfigError, match=r"dropout"):
        load_config(None, {"tune.search_space": {"dropout": [0.2, 1.5]}})  # 1.5 is not a dropout
    cfg = load_config(None, {"tune.search_space": {"dropout": [0.1, 0.3], "layers": [1, 2]}})
    assert cfg.tune_dir.endswith("tune")


@pytest.mark.slow  # two short retriever trainings under Ray Tune (~1 min)
def test_tuning_reads_no_test_split_and_records_its_choice(ray_cluster, tmp_path, monkeypatch):
    from rayrec.tuning.search import RECORD_FILE, run_tuning

    data = tmp_path / "run" / "data"
    write_cyclic_dataset(data)
    for d in (data / schema.INTERACTIONS_DIR / "test", data / schema.EXAMPLES_DIR / "test"):
        shutil.rmtree(d, ignore_errors=True)  # nothing the tuning reads may be the test split
    monkeypatch.chdir(tmp_path)  # a relative run_dir, as a config file gives it
    cfg = load_config(overrides={
        "run_dir": "run",
        "retriever.max_len": 8, "retriever.dim": 32, "retriever.layers": 1, "retriever.batch_size": 16,
        "retriever.eval_every_epochs": 2, "retriever.num_workers": 1, "retriever.torch_threads": 1,
        "tune.search_space": {"lr": [1e-4, 1e-2]}, "tune.max_epochs": 4,
    })
    record = run_tuning(cfg)
    assert [t["params"]["lr"] for t in record["trials"]] == [1e-2, 1e-4], record  # best first
    best = record["best"]
    assert best["params"] == {"lr": 1e-2} and best["valid"] > record["trials"][1]["valid"]
    assert record["apply"] == "--set retriever.lr=0.01" and record["budget"]["max_epochs"] == 4
    assert "never read" in record["split_read"]
    assert json.loads(Path(cfg.tune_dir, RECORD_FILE).read_text()) == record
    assert not Path(cfg.retriever_dir).exists()  # trials write under tune/, never the run's retriever
    trials = sorted(Path(cfg.tune_dir, "trials").iterdir())  # not in Tune's working directory
    assert len(trials) == 2 and all((t / "model").is_dir() for t in trials)
