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
        assert not caplog.records
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
