"""Resource checks against the session cluster: fail fast on what can never fit, warn on busy."""

from __future__ import annotations

import logging

import pytest
from rayrec.errors import ClusterResourceError
from rayrec.runtime import require_resources, warn_if_busy


def test_require_resources_names_what_is_missing(ray_cluster) -> None:
    require_resources({"CPU": 1.0}, "a small job")
    with pytest.raises(ClusterResourceError, match=r"training needs \{'GPU': 2.0\}"):
        require_resources({"GPU": 2.0, "CPU": 1.0}, "training")


def test_warn_if_busy(ray_cluster, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rayrec.runtime"):
        assert warn_if_busy({"CPU": 0.01}, "a tiny job") is False
        # Only rayrec's own records: Ray's background threads (a Serve handle's metrics push
        # from an earlier test) may log into the same capture at any time.
        assert not [r for r in caplog.records if r.name == "rayrec.runtime"]
        assert warn_if_busy({"CPU": 1000.0}, "training") is True
    assert "training needs {'CPU': 1000.0} but only" in caplog.text


def test_reading_the_dashboard_url_keeps_the_callers_sigterm_handler(ray_cluster):
    """ray.init(ignore_reinit_error=True) re-installs Ray's SIGTERM handler (sys.exit); reading
    the dashboard address must not take `rayrec serve`'s clean-shutdown handler away."""
    import signal

    from rayrec.runtime import dashboard_url

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert dashboard_url()  # the session cluster runs a dashboard
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_serve_data_plane_env_picks_haproxy_only_when_installed(monkeypatch):
    """ray.serve_data_plane: the environment a local Ray is started with (read at start-up)."""
    import shutil

    from rayrec.errors import ConfigError
    from rayrec.runtime import serve_data_plane_env

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert serve_data_plane_env("default") == {}
    grpc = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    assert serve_data_plane_env("grpc") == grpc
    assert serve_data_plane_env("auto") == grpc  # no load balancer: Serve's proxy stays
    with pytest.raises(ConfigError, match="haproxy binary"):
        serve_data_plane_env("haproxy")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/haproxy")
    haproxy = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert serve_data_plane_env("auto") == haproxy == serve_data_plane_env("haproxy")
    assert serve_data_plane_env("grpc") == grpc


def test_local_ray_env_adds_the_short_drain_then_restores(monkeypatch):
    """A local Ray gets the data plane and the 2 s drain; a value the user set is kept; after
    the block the driver's environment is as it was."""
    import os

    from rayrec.runtime import LOCAL_DRAIN_ENV, local_ray_env

    for key in LOCAL_DRAIN_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "10")
    with local_ray_env("default") as added:
        assert added == {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
        assert os.environ["RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S"] == "10"
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in os.environ
    assert os.environ["RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S"] == "10"
