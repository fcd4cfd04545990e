"""Jobs on a real Ray cluster: `ray start --head` + a second node, submitted through the Jobs SDK.

Named test_zz_* so it runs last: it starts its own two-node cluster beside the session one
(on ports of its own).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str) -> None:
    """Stop only this cluster's processes (``ray stop`` would stop every cluster here)."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def job_cluster():
    """A real cluster: a head (2 CPUs) and a second node (1 CPU) started with the ray CLI."""
    temp_dir = tempfile.mkdtemp(prefix="rrjob")  # short: Ray's socket paths have a length limit
    gcs_port, dash_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray 2.60 turns token auth on for a node that finds ~/.ray/auth_token (which any local
    # ray.init() writes) but not for one joining with --address: pin one mode for every node.
    env["RAY_AUTH_MODE"] = "disabled"
    # Job entrypoints run `python` from the nodes' PATH: this environment's, as when activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    common = ["--disable-usage-stats", f"--temp-dir={temp_dir}"]

    def own_ports() -> list[str]:
        # Every node gets its own agent/metrics ports: the defaults (e.g. the job agent's
        # 52365) are already taken by the test session's cluster, and a job agent that
        # cannot bind leaves the Jobs API with "No available agent to submit job".
        return [f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}"]

    head = subprocess.run(
        [RAY, "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
         f"--ray-client-server-port={_free_port()}", "--include-dashboard=true", "--num-cpus=2",
         *own_ports(), *common],
        env=env, capture_output=True, text=True, timeout=180,
    )
    try:
        assert head.returncode == 0, f"ray start --head failed:\n{head.stdout}\n{head.stderr}"
        # The head prints the address other nodes join with (the node's IP, not loopback).
        found = re.search(r"--address='([^']+)'", head.stdout + head.stderr)
        address = found.group(1) if found else f"127.0.0.1:{gcs_port}"
        node = subprocess.run(
            [RAY, "start", f"--address={address}", "--num-cpus=1", *own_ports(), *common],
            env=env, capture_output=True, text=True, timeout=180,
        )
        assert node.returncode == 0, f"second node failed to join {address}:\n{node.stderr[-3000:]}"
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(f"http://127.0.0.1:{dash_port}")
        yield client
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit_and_wait(client, entrypoint: str, timeout_s: float = 420) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    deadline = time.time() + 300
    while True:  # the dashboard's job agent comes up a little after `ray start` returns
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": str(REPO), "env_vars": {"HF_HUB_OFFLINE": "1"}},
            )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(3)
    deadline = time.time() + timeout_s
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {entrypoint!r} did not finish in {timeout_s}s:\n{client.get_job_logs(job_id)}")
        time.sleep(2)
        status = client.get_job_status(job_id)
    return str(status), client.get_job_logs(job_id)


def test_cluster_has_two_nodes(job_cluster) -> None:
    status, logs = _submit_and_wait(
        job_cluster,
        "python -c \"import ray; ray.init(); print('NODES', len([n for n in ray.nodes() if n['Alive']]))\"",
    )
    assert "SUCCEEDED" in status, logs
    assert "NODES 2" in logs


def test_preprocess_then_train_jobs(job_cluster, tmp_path: Path) -> None:
    out = tmp_path / "run"
    small = (
        f"--out {out} --set data.synthetic.n_users=60 --set data.synthetic.n_items=40 "
        "--set data.synthetic.n_events=1500"
    )
    status, logs = _submit_and_wait(job_cluster, f"python jobs/preprocess.py {small}")
    assert "SUCCEEDED" in status, logs
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["counts"]["users"] > 0

    from rayrec.models.tiny import make_tiny_backbone

    backbone = make_tiny_backbone("bert", tmp_path / "tiny-bert")
    status, logs = _submit_and_wait(
        job_cluster,
        f"python jobs/train.py {small} --backbone {backbone} --set train.max_steps=3 "
        "--set train.batch_size=4 --set train.eval_every_steps=3 --set train.checkpoint_every_steps=3 "
        "--set retriever.max_epochs=3 --set retriever.eval_every_epochs=3 --set retriever.mine_candidates=20",
    )
    assert "SUCCEEDED" in status, logs
    from rayrec.train.checkpoint import best_checkpoint

    # Both stages ran: the retriever was published and the ranker trained on its mined lists.
    assert (out / "retriever" / "model" / "retriever.json").is_file()
    assert (out / "retriever" / "examples" / "train").is_dir()
    assert best_checkpoint(str(out / "checkpoints"))[0] is not None


def test_missing_gpu_fails_with_clear_message(job_cluster, tmp_path: Path) -> None:
    status, logs = _submit_and_wait(
        job_cluster, f"python jobs/train.py --out {tmp_path} --set train.use_gpu=true"
    )
    assert "FAILED" in status
    assert "needs {'GPU'" in logs and "Traceback" not in logs, logs
