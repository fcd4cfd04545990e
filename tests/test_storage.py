"""Run-directory locations and file access, local and on an S3-compatible server (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rayrec import storage
from rayrec.config import load_config

pytest.importorskip("moto")
from s3_support import list_keys, moto_server  # noqa: E402

BUCKET = "rayrec-storage"


@pytest.fixture(scope="module")
def s3_env():
    with moto_server(BUCKET) as env, pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("s3_env")
    return f"s3://{BUCKET}/{tmp_path.name}"


def test_config_path_joins_uris_and_resolves_local_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = load_config(overrides={"run_dir": "~/../run"})
    assert local.path("stages", "x.json") == str(Path("~/../run").expanduser().resolve() / "stages" / "x.json")
    assert load_config(overrides={"run_dir": "out"}).data_dir == str(tmp_path / "out" / "data")
    remote = load_config(overrides={"run_dir": "s3://bucket/runs/a/"})
    assert remote.path() == "s3://bucket/runs/a"
    assert remote.path("serve", "counterfactual.json") == "s3://bucket/runs/a/serve/counterfactual.json"
    assert (remote.data_dir, remote.checkpoint_dir, remote.event_log_dir) == (
        "s3://bucket/runs/a/data", "s3://bucket/runs/a/checkpoints", "s3://bucket/runs/a/events")
    assert not (tmp_path / "s3:").exists()


def test_read_write_and_exists(root: str) -> None:
    f = storage.join(root, "a", "b.txt")
    assert not storage.exists(f) and not storage.is_dir(root)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f)
    storage.write_text(f, "hello")
    assert storage.read_text(f) == "hello" and storage.is_file(f) and storage.is_dir(storage.join(root, "a"))
    storage.write_text(f, "again")  # replaced whole
    assert storage.read_text(f) == "again"
    storage.write_table(pd.DataFrame({"x": [1, 2], "v": [[1, 2], []]}), storage.join(root, "t.parquet"))
    fs, path = storage.resolve_fs(storage.join(root, "t.parquet"))
    import pyarrow.parquet as pq

    assert pq.read_table(path, filesystem=fs).to_pydict() == {"x": [1, 2], "v": [[1, 2], []]}


def test_local_copy_downloads_a_directory_once(root: str) -> None:
    target = storage.join(root, "model")
    storage.write_bytes(storage.join(target, "weights.bin"), b"\x00\x01")
    storage.write_text(storage.join(target, "sub", "meta.json"), "{}")
    copy = storage.local_copy(target)
    assert Path(copy, "weights.bin").read_bytes() == b"\x00\x01"
    assert Path(copy, "sub", "meta.json").read_text() == "{}"
    assert storage.local_copy(target) == copy  # downloaded once
    if storage.is_uri(root):  # a local path passes through as it is
        with pytest.raises(FileNotFoundError):
            storage.local_copy(storage.join(root, "missing"))


def test_item_index_round_trip(root: str) -> None:
    from rayrec.retrieval.index import ItemIndex

    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = ItemIndex.from_embeddings(np.arange(100, 140), x, ["a", "b"] * 20, index_type="ivf")
    index.save(storage.join(root, "index"))
    loaded = ItemIndex.load(storage.join(root, "index"))
    assert loaded.meta == index.meta and loaded.search(x[3], 5) == index.search(x[3], 5)
    with pytest.raises(FileNotFoundError, match="no item index"):
        ItemIndex.load(storage.join(root, "nothing"))


def test_report_on_s3(s3_env, tmp_path: Path) -> None:
    from rayrec.report import write_report
    from test_report import synthetic_results

    run_dir = f"s3://{BUCKET}/report-run"
    assert write_report(run_dir, synthetic_results(tmp_path)) == f"{run_dir}/report.md"
    keys = set(list_keys(s3_env, BUCKET, "report-run/"))
    assert {"report-run/report.md", "report-run/report.json", "report-run/report/training.png",
            "report-run/report/quality.png", "report-run/report/regret.png",
            "report-run/report/tradeoff.png"} <= keys
    assert "```" not in storage.read_text(f"{run_dir}/report.md")


def test_redact_removes_uri_credentials_and_keeps_the_rest():
    """#23: what reports, tracking and the console show never carries a URI's credentials."""
    from rayrec.storage import redact

    assert redact("run_dir: s3://AKIA:s3cr3t@bucket/run and gs://tok@b/x") == "run_dir: s3://***@bucket/run and gs://***@b/x"
    assert redact("s3://bucket/run, /local/path, http://minio:9000") == "s3://bucket/run, /local/path, http://minio:9000"
