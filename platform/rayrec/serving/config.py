"""Config section for the Ray Serve recommendation endpoint."""

from __future__ import annotations

from pydantic import Field

from rayrec.configbase import Section


class AutoscalingSettings(Section):
    """Mirrors Ray Serve's autoscaling_config."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    upscale_delay_s: float = Field(3.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)


class RankingDeploymentSettings(Section):
    """Resources, batching and autoscaling of the ranking deployment."""

    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)


class ServeConfig(Section):
    """The composed endpoint."""

    checkpoint: str | None = None  # default: the latest exported adapter, else the untuned backbone
    ranking: RankingDeploymentSettings = Field(default_factory=RankingDeploymentSettings)
    retrieval_replicas: int = Field(1, ge=1)
    rank_timeout_s: float = Field(5.0, gt=0)
    max_k: int = Field(100, ge=1)
    max_text_length: int = Field(1000, ge=1)
    max_history_length: int = Field(200, ge=1)
    api_keys_env: str = "RAYREC_API_KEYS"
    api_keys_file: str | None = None
    require_api_key: bool = False
    event_log: str | None = None  # default: <run_dir>/events
    event_flush_rows: int = Field(64, ge=1)
    event_flush_interval_s: float = Field(2.0, gt=0)
    default_policy: str = "greedy"
