"""Shared fixtures: one Ray instance for the whole test session.

The session cluster is a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: two raylets), so multi-node tests (training workers
spread over nodes) and single-node ones (Ray Data, Serve) share one start-up cost.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# No implicit ray.init() in this process: a Serve handle's background metrics thread would
# otherwise re-connect the driver right after a test's ray.shutdown() and race the next
# explicit ray.init() ("called ray.init twice") or the session teardown.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
# No Ray-internal metrics in tests (nothing here reads them): Ray's OpenTelemetry exporter
# thread segfaulted a Ray Data SplitCoordinator actor mid-run once (TemporalMetricStorage::
# buildMetrics), failing a ZeRO-3 training test for a reason outside rayrec.
os.environ.setdefault("RAY_enable_metrics_collection", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

# Ray reads RAY_ENABLE_AUTO_CONNECT once, when ray is first imported: every import of ray (and
# of rayrec, which imports it) comes after the settings above.
import pytest  # noqa: E402
from rayrec.runtime import free_port  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML_LATEST_SMALL = SHARED_DATA / "ml-latest-small"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cluster_jobs`` run last: each starts a `ray start` cluster of its own beside
    the session one, and nothing else should share the CPUs with those jobs."""
    items.sort(key=lambda item: item.get_closest_marker("cluster_jobs") is not None)  # stable




@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node local Ray cluster (2 logical CPUs each), connected for the whole session."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        # With a dashboard: the endpoint is deployed (and its adapter switched) through Serve's
        # REST API, as on a real cluster.
        head_node_args={"num_cpus": 2, "object_store_memory": 400 * 1024**2,
                        "include_dashboard": True, "dashboard_port": free_port()},
    )
    cluster.add_node(num_cpus=2, object_store_memory=400 * 1024**2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True)
    yield cluster
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    _shutdown(cluster)


def _shutdown(cluster) -> None:
    """Disconnect this driver, then stop the cluster's nodes.

    A Serve handle created in this process keeps a background thread that pushes metrics every
    couple of seconds; a push after ``ray.shutdown()`` goes through Ray's auto-init and connects
    the driver again, and ``Cluster.shutdown`` then refuses to remove the head node it is
    connected to. Disconnect again and retry until the nodes are gone.
    """
    import ray

    for attempt in range(10):
        ray.shutdown()
        try:
            cluster.shutdown()
            return
        except ValueError:
            if attempt == 9:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    """Path to MovieLens ml-latest-small beside the checkout; skips when it is absent."""
    if not (ML_LATEST_SMALL / "ratings.csv").is_file():
        pytest.skip(f"real data not found at {ML_LATEST_SMALL} (../shared is absent)")
    return ML_LATEST_SMALL
