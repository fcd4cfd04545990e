"""Config section for the Ray Serve recommendation endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayrec.configbase import Section
from rayrec.explore.config import PolicyName


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
    # How long a lone request waits for others to batch with. 0: none; under load requests
    # still batch, since they queue while the previous batch computes (a wait only adds
    # latency at low load: ~10 ms per request at one client for 0.01).
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)


class GenerationSettings(Section):
    """The generation deployment (:mod:`rayrec.serving.generation`): a causal LM that names
    catalog items as a retrieval source and explains the top items of a slate in words.

    Off by default: SmolLM2-135M takes ~2.5 s to generate 10 items and ~0.5-1 s per
    explanation on 2 CPU cores; on a GPU give it ``num_gpus``.
    """

    enabled: bool = False
    backbone: str = "smollm2-135m"  # a causal LM (embedded alias, local dir or hub id)
    # A LoRA adapter tuned on history -> next title: "tuned" (`rayrec train-generator`'s), a
    # directory or URI; None = zero-shot.
    adapter: str | None = None
    # 0.25 fits the default app on a 2-core laptop (1.75 CPUs without it); it still runs
    # max(1, int(num_cpus)) torch threads. On a cluster give it whole CPUs or a GPU.
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(4, ge=1)
    # Where candidates come from when the request does not say (``source`` on /recommend):
    # index (the retrieval indexes), generative (the LM alone) or both (merged, then ranked).
    default_source: Literal["index", "generative", "both"] = "index"
    # Free text from a user with no history: what the LM knows about the request reaches them.
    new_user_text_source: Literal["index", "generative", "both"] = "both"
    k: int = Field(10, ge=1)  # items the LM generates per request (beam search, >= k beams)
    beams: int = Field(10, ge=1)
    history_items: int = Field(10, ge=1)  # newest titles in the generation prompt
    blend_weight: float = Field(0.5, ge=0, le=1)  # "both": (1-w) index + w generated (min-max scaled)
    timeout_s: float = Field(15.0, gt=0)  # generation slower than this: index candidates, degraded
    # "explain": true: one sentence for each of the top explain_max_items items, within
    # explain_budget_ms of the request's own time; the rest say why they have none.
    explain_max_items: int = Field(3, ge=0)
    # An explanation quotes the history it reads. user_id is asserted by the client, so by
    # default it reads only the history the request itself sent; True: also the stored history
    # of the named user (only where every client may read every user's titles).
    explain_stored_history: bool = False
    explain_budget_ms: float = Field(3000.0, gt=0)
    explain_max_new_tokens: int = Field(40, ge=4)


class ServeConfig(Section):
    """The composed endpoint."""

    @model_validator(mode="after")
    def _reward_bounds(self) -> ServeConfig:
        if self.reward_min > self.reward_max:
            raise ValueError(f"reward_min ({self.reward_min}) must be <= reward_max ({self.reward_max})")
        if self.policies is not None and self.default_policy not in self.policies:
            raise ValueError(f"policies: must include default_policy {self.default_policy!r}")
        return self

    app_name: str = "rayrec"
    route_prefix: str = "/"
    host: str = "127.0.0.1"  # HTTP proxy bind address ("0.0.0.0" on a cluster)
    port: int = Field(8000, ge=1, le=65535)
    checkpoint: str | None = None  # default: the latest exported adapter, else the untuned backbone
    ranking: RankingDeploymentSettings = Field(default_factory=RankingDeploymentSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    retrieval_replicas: int = Field(1, ge=1)
    retrieval_num_cpus: float = Field(0.5, ge=0)
    # Requests a retrieval replica takes at once (Serve's default of 5 made callers back off
    # and retry under 16 concurrent clients; a lookup is milliseconds, so queue them here).
    retrieval_max_ongoing_requests: int = Field(32, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(0.25, ge=0)
    ingress_max_ongoing_requests: int = Field(64, ge=1)
    ingress_max_queued_requests: int = Field(128, ge=-1)
    rank_candidates: int = Field(50, ge=1)  # retrieved candidates passed on to the ranker
    # False: serve the retrieval order, no ranking call (when the ranker does not beat the
    # retriever on the full-catalog evaluation; the ranking deployment still runs for switches).
    use_ranker: bool = True
    text_weight: float = Field(0.5, ge=0, le=1)  # query = (1-w) history + w text when both given
    max_body_bytes: int = Field(65_536, ge=256)
    request_cache_size: int = Field(10_000, ge=1)  # recent slates kept for /feedback
    rank_timeout_s: float = Field(5.0, gt=0)
    # each retrieval call the ingress awaits (a generative one may take serve.generation.timeout_s);
    # past it the request is a 503 + Retry-After and the call is cancelled, never an open wait
    retrieval_timeout_s: float = Field(30.0, gt=0)
    max_k: int = Field(100, ge=1)
    max_text_length: int = Field(1000, ge=1)
    max_history_length: int = Field(200, ge=1)
    api_keys_env: str = "RAYREC_API_KEYS"
    api_keys_file: str | None = None
    require_api_key: bool = False
    # Secret env vars of the job (names matching SECRET/TOKEN/PASSWORD/KEY...) never go into the
    # Serve app config, which the dashboard shows; names listed here do (a private test cluster).
    app_config_secrets: list[str] = Field(default_factory=list)
    # Per-key quota on /recommend and /feedback (a token bucket per client key, per ingress
    # replica: N replicas admit up to N x the rate): past it 429 + Retry-After, other keys
    # unaffected. None: no quota. Only with require_api_key (no key, no identity to charge).
    key_quota_per_s: float | None = Field(None, gt=0)
    key_quota_burst: int = Field(20, ge=1)  # requests a key may send at once after a quiet spell
    # Admin keys (POST /items, /items/hide: catalog changes on the running endpoint), read like
    # the client keys above but never the same list: none configured, the admin routes are 403.
    admin_api_keys_env: str = "RAYREC_ADMIN_KEYS"
    admin_api_keys_file: str | None = None
    # Added and hidden items persist here (local path or URI); default: <run_dir>/catalog.
    catalog: str | None = None
    admin_max_rows: int = Field(1000, ge=1)  # rows per POST /items (item ids per /items/hide)
    max_added_items: int = Field(100_000, ge=0)  # items added since training, every POST together
    # Body limit of the admin routes (1000 rows with free text do not fit max_body_bytes).
    admin_max_body_bytes: int = Field(4 * 1024 * 1024, ge=256)
    # Embedding and persisting one POST's rows; past it the answer is a 503 (the rows may still
    # land: a retry reports them as already added).
    admin_timeout_s: float = Field(120.0, gt=0)
    # Each retrieval (and generation) replica checks the persisted catalog this often and loads
    # what other replicas added: a posted item is served everywhere within about this long.
    catalog_refresh_s: float = Field(1.0, gt=0)
    # Commits (one per POST) kept as separate files before they are merged into one.
    catalog_compact_segments: int = Field(64, ge=2)
    event_log: str | None = None  # default: <run_dir>/events
    event_flush_rows: int = Field(64, ge=1)
    event_flush_interval_s: float = Field(2.0, gt=0)
    # Rows an ingress replica holds while storage is failing; beyond it /recommend and
    # /feedback answer 503 + Retry-After (back-pressure) instead of dropping what they logged.
    event_max_buffered_rows: int = Field(100_000, ge=1)
    default_policy: PolicyName = "greedy"
    # The policies a request may name (each is a shared state actor, loaded from the run dir on
    # first use); None: every registered policy. Anything else is a 422, nothing loaded.
    policies: list[PolicyName] | None = None
    policy_timeout_s: float = Field(2.0, gt=0)  # each call to a policy's shared state actor
    # Ingress replicas select on a local copy of each policy's learned statistics, refreshed at
    # most this often (0: select on the shared state actor itself, one round trip a request).
    policy_sync_s: float = Field(1.0, ge=0)
    # Accepted /feedback rewards (a click is 1); anything outside is a 422, never learned from.
    reward_min: float = 0.0
    reward_max: float = 1.0
    # The main job's simulated traffic (logged with a stochastic policy for off-policy evaluation).
    simulate_requests: int = Field(150, ge=0)
    simulate_policy: str = "epsilon_greedy"
