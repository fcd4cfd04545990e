"""Jobs on a real Ray cluster, run the way the README tells a person to: `ray start` and
`ray job submit` as commands, with the README's token-auth recipe, in a home directory of their
own (so the ``~/.ray`` they see is the test's, not yours).

Two starting points: a home where nothing ran, and one where a local rayrec run already wrote
``~/.ray/auth_token`` (which turns token auth on for a later ``ray start --head``).

Marked ``cluster_jobs``: conftest.py runs them after every other test (each starts a cluster
of its own, on ports of its own, beside the session one).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ("--set data.synthetic.n_users=60 --set data.synthetic.n_items=40 "
         "--set data.synthetic.n_events=1500")

pytestmark = [pytest.mark.slow, pytest.mark.cluster_jobs]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (each socket stays bound until all are picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _user_env(home: Path) -> dict[str, str]:
    """A person's shell with the venv activated: none of the RAY_* variables this test session
    sets, a home of its own. Build caches a real home already holds are pointed at, not rebuilt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1")
    caches = Path.home() / ".cache"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(caches / "torch_extensions"))  # DeepSpeed's JIT ops
    env.setdefault("RAYREC_CACHE", str(caches / "rayrec"))
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


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


class Cluster:
    """``ray start --head`` (and nodes) with the README's recipe; ``submit`` is ``ray job submit``."""

    def __init__(self, home: Path):
        # The README: `export RAY_AUTH_MODE=token` and `ray get-auth-token --generate` (a token in
        # ~/.ray/auth_token unless one is there), then `ray start --head`, `ray job submit`.
        self.env = _user_env(home) | {"RAY_AUTH_MODE": "token"}
        self.temp_dir = tempfile.mkdtemp(prefix="rrjob")  # short: socket paths have a length limit
        self.ports = iter(_free_ports(20))  # every port this cluster's nodes bind, all distinct
        self.dashboard = f"http://127.0.0.1:{next(self.ports)}"
        token = _run([str(BIN / "ray"), "get-auth-token", "--generate"], self.env)
        assert token.returncode == 0, token.stderr
        self.common = ["--disable-usage-stats", f"--temp-dir={self.temp_dir}"]

    def _own_ports(self) -> list[str]:
        # Every node gets its own agent/metrics ports: the defaults (e.g. the job agent's 52365)
        # may be taken by the test session's cluster, and a job agent that cannot bind leaves
        # the Jobs API with "No available agent to submit job".
        return [f"--dashboard-agent-listen-port={next(self.ports)}",
                f"--dashboard-agent-grpc-port={next(self.ports)}",
                f"--metrics-export-port={next(self.ports)}",
                f"--runtime-env-agent-port={next(self.ports)}"]

    def start(self, extra_nodes: int = 0) -> None:
        head = _run([str(BIN / "ray"), "start", "--head", f"--port={next(self.ports)}",
                     f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                     f"--ray-client-server-port={next(self.ports)}", "--include-dashboard=true",
                     "--num-cpus=2", *self._own_ports(), *self.common], self.env)
        assert head.returncode == 0, f"ray start --head failed:\n{head.stdout}\n{head.stderr}"
        found = re.search(r"--address='([^']+)'", head.stdout + head.stderr)  # how nodes join
        assert found, head.stdout
        for _ in range(extra_nodes):
            node = _run([str(BIN / "ray"), "start", f"--address={found.group(1)}", "--num-cpus=1",
                         *self._own_ports(), *self.common], self.env)
            assert node.returncode == 0, f"a node failed to join:\n{node.stderr[-3000:]}"

    def submit(self, entrypoint: str, timeout_s: float = 420) -> tuple[int, str]:
        """``ray job submit --working-dir . -- <entrypoint>`` from the checkout, as a shell would
        split it: (exit code, what the command printed, the job's log included)."""
        args = [str(BIN / "ray"), "job", "submit", f"--address={self.dashboard}", "--working-dir", ".",
                "--", *shlex.split(entrypoint)]
        deadline = time.time() + 300
        while True:  # the dashboard's job agent comes up a little after `ray start` returns
            done = _run(args, self.env, timeout=timeout_s)
            output = done.stdout + done.stderr
            if "No available agent" not in output or time.time() > deadline:
                return done.returncode, output
            time.sleep(3)

    def stop(self) -> None:
        _stop_cluster(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _idle_session_serve() -> None:
    """These tests run last and use a cluster of their own: stop the session cluster's Serve
    apps first (their controller, proxies and replicas would share the 2 CPUs with the jobs)."""
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()


@pytest.fixture(scope="module")
def job_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A head (2 CPUs) and a second node (1 CPU), in a home where a local rayrec run came first."""
    home = tmp_path_factory.mktemp("home")
    local = _run([str(BIN / "rayrec"), "preprocess", "--out", str(home / "local"), *SMALL.split()],
                 _user_env(home))
    assert local.returncode == 0, local.stderr[-3000:]
    assert (home / ".ray" / "auth_token").is_file()  # what used to break `ray job submit`
    cluster = Cluster(home)
    try:
        cluster.start(extra_nodes=1)
        yield cluster
    finally:
        cluster.stop()


def test_submit_from_a_fresh_home(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "home")
    try:
        cluster.start()
        code, out = cluster.submit("python -c \"print('SUBMITTED')\"")
    finally:
        cluster.stop()
    assert code == 0 and "SUBMITTED" in out, out


def test_cluster_has_two_nodes(job_cluster: Cluster) -> None:
    code, out = job_cluster.submit(
        "python -c \"import ray; ray.init(); print('NODES', len([n for n in ray.nodes() if n['Alive']]))\""
    )
    assert code == 0 and "NODES 2" in out, out


def test_preprocess_then_train_jobs(job_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, log = job_cluster.submit(f"python jobs/preprocess.py --out {out} {SMALL}")
    assert code == 0, log
    assert "preprocess: done in" in log and "users" in log  # the stage line with its figures
    from rayrec.models.tiny import make_tiny_backbone

    backbone = make_tiny_backbone("bert", tmp_path / "tiny-bert")
    code, log = job_cluster.submit(
        f"python jobs/train.py --out {out} {SMALL} --backbone {backbone} --set train.max_steps=3 "
        "--set train.batch_size=4 --set train.eval_every_steps=3 --set train.checkpoint_every_steps=3 "
        "--set retriever.max_epochs=3 --set retriever.eval_every_epochs=3 --set retriever.mine_candidates=20",
    )
    assert code == 0, log
    from rayrec.checkpoints import best_checkpoint

    # Both stages ran: the retriever was published and the ranker trained on its mined lists.
    assert (out / "retriever" / "model" / "retriever.json").is_file()
    assert (out / "retriever" / "examples" / "train").is_dir()
    assert best_checkpoint(str(out / "checkpoints"))[0] is not None
    # The job's log is the quiet console: progress and figures, none of Ray's internals.
    assert "step 3/3" in log and "train: done in" in log, log
    for noise in ("TrainingReport(", "PlacementGroupCleaner", "core_worker.cc", "logging_progress"):
        assert noise not in log, f"{noise!r} in the job log:\n{log}"


def test_relative_data_path_is_rejected_in_the_job(job_cluster: Cluster, tmp_path: Path) -> None:
    """The README's command with a config whose data.path is relative (../shared/...): the job
    sees only its copy of --working-dir, so it stops at once saying what to use instead."""
    code, log = job_cluster.submit(
        f"python jobs/preprocess.py --config configs/ml-latest-small.yaml --out {tmp_path}")
    assert code != 0
    assert "data.path '../shared/data/ml-latest-small' is relative" in log, log
    assert "s3://" in log and "Traceback" not in log, log


def test_missing_gpu_fails_with_clear_message(job_cluster: Cluster, tmp_path: Path) -> None:
    code, log = job_cluster.submit(f"python jobs/train.py --out {tmp_path} --set train.use_gpu=true")
    assert code != 0
    assert "needs {'GPU'" in log and "Traceback" not in log, log
