"""Config section for the Ray Serve recommendation endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayrec.configbase import Section
from rayrec.explore.config import PolicyName


class AutoscalingSettings(Section):
    """Mirrors Ray Serve's autoscaling_config."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas the deployment scales down to.")
    max_replicas: int = Field(2, ge=1, description="Most replicas the deployment scales up to.")
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="Ongoing requests per replica that autoscaling aims for."
    )
    upscale_delay_s: float = Field(
        3.0, ge=0,
        description="Seconds the load must stay high before adding replicas.",
    )
    downscale_delay_s: float = Field(
        30.0, ge=0,
        description="Seconds the load must stay low before removing replicas.",
    )


class RankingDeploymentSettings(Section):
    """Resources, batching and autoscaling of the ranking deployment."""

    num_gpus: float = Field(0.0, ge=0, description="GPUs per ranking replica (fractions allowed).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per ranking replica (fractions allowed).")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests a ranking replica takes at once.")
    max_queued_requests: int = Field(
        64, ge=-1,
        description="Requests queued for the ranking deployment before callers are refused (-1: unlimited).",
    )
    max_batch_size: int = Field(8, ge=1, description="Requests scored together in one batch.")
    # 0: none; under load requests still batch, since they queue while the previous batch
    # computes (a wait only adds latency at low load: ~10 ms per request at one client for 0.01).
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="Seconds a lone request waits for others to batch with (0: no wait)."
    )
    autoscaling: AutoscalingSettings = Field(
        default_factory=AutoscalingSettings, description="Autoscaling of the ranking deployment."
    )


class GenerationSettings(Section):
    """The generation deployment (:mod:`rayrec.serving.generation`): a causal LM that names
    catalog items as a retrieval source and explains the top items of a slate in words.

    Off by default: SmolLM2-135M takes ~2.5 s to generate 10 items and ~0.5-1 s per
    explanation on 2 CPU cores; on a GPU give it ``num_gpus``.
    """

    enabled: bool = Field(
        False,
        description="Deploy the generation deployment (generative candidates, explanations).",
    )
    backbone: str = Field(
        "smollm2-135m",
        description="The causal LM: embedded alias, local directory or hub id.",
    )
    adapter: str | None = Field(
        None,
        description="LoRA adapter tuned on history -> next title: \"tuned\" (`rayrec train-generator`'s), "
        "a directory or URI; None: zero-shot.",
    )
    # 0.25 fits the default app on a 2-core laptop (1.75 CPUs without it); it still runs
    # max(1, int(num_cpus)) torch threads. On a cluster give it whole CPUs or a GPU.
    num_cpus: float = Field(0.25, ge=0, description="CPUs per generation replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per generation replica (fractions allowed).")
    replicas: int = Field(1, ge=1, description="Generation replicas.")
    max_ongoing_requests: int = Field(4, ge=1, description="Requests a generation replica takes at once.")
    default_source: Literal["index", "generative", "both"] = Field(
        "index",
        description="Where candidates come from when a /recommend request sets no source: the retrieval indexes, "
        "the LM alone, or both (merged, then ranked).",
    )
    new_user_text_source: Literal["index", "generative", "both"] = Field(
        "both",
        description="Candidate source for free text from a user with no history (so what the LM knows "
        "reaches them).",
    )
    k: int = Field(
        10, ge=1,
        description="Items the LM generates per request (beam search with at least k beams).",
    )
    beams: int = Field(10, ge=1, description="Beam width of the generation.")
    history_items: int = Field(10, ge=1, description="Newest history titles in the generation prompt.")
    blend_weight: float = Field(
        0.5, ge=0, le=1,
        description="Source both: candidate score = (1-w) index + w generated (min-max scaled).",
    )
    timeout_s: float = Field(
        15.0, gt=0,
        description="Seconds to wait for generation; slower: index candidates only, marked degraded.",
    )
    explain_max_items: int = Field(
        3, ge=0, description="\"explain\": true: top items of the slate that get a one-sentence explanation."
    )
    # user_id is asserted by the client, so by default an explanation reads only the history the
    # request itself sent.
    explain_stored_history: bool = Field(
        False,
        description="Explanations may also quote the stored history of the named user (only where every "
        "client may read every user's titles).",
    )
    explain_budget_ms: float = Field(
        3000.0, gt=0,
        description="Milliseconds of the request's time explanations may take; the rest say why they have "
        "none.",
    )
    explain_max_new_tokens: int = Field(40, ge=4, description="Most tokens generated per explanation.")


class ServeConfig(Section):
    """The composed endpoint."""

    @model_validator(mode="after")
    def _reward_bounds(self) -> ServeConfig:
        if self.reward_min > self.reward_max:
            raise ValueError(f"reward_min ({self.reward_min}) must be <= reward_max ({self.reward_max})")
        if self.policies is not None and self.default_policy not in self.policies:
            raise ValueError(f"policies: must include default_policy {self.default_policy!r}")
        return self

    app_name: str = Field("rayrec", description="Name of the Ray Serve application.")
    route_prefix: str = Field("/", description="HTTP path prefix the endpoint is served under.")
    host: str = Field("127.0.0.1", description="HTTP proxy bind address (\"0.0.0.0\" on a cluster).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the endpoint.")
    checkpoint: str | None = Field(
        None, description="Ranker to serve; None: the latest exported adapter, else the untuned backbone."
    )
    ranking: RankingDeploymentSettings = Field(
        default_factory=RankingDeploymentSettings,
        description="Resources, batching and autoscaling of the ranking deployment.",
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings,
        description="The generation deployment (LM candidates and explanations).",
    )
    retrieval_replicas: int = Field(1, ge=1, description="Retrieval replicas.")
    retrieval_num_cpus: float = Field(
        0.5, ge=0,
        description="CPUs per retrieval replica (fractions allowed).",
    )
    # Serve's default of 5 made callers back off and retry under 16 concurrent clients; a lookup is
    # milliseconds, so queue them here.
    retrieval_max_ongoing_requests: int = Field(
        32, ge=1,
        description="Requests a retrieval replica takes at once.",
    )
    ingress_replicas: int = Field(1, ge=1, description="Ingress (HTTP API) replicas.")
    ingress_num_cpus: float = Field(0.25, ge=0, description="CPUs per ingress replica (fractions allowed).")
    ingress_max_ongoing_requests: int = Field(
        64, ge=1,
        description="Requests an ingress replica takes at once.",
    )
    ingress_max_queued_requests: int = Field(
        128, ge=-1, description="Requests queued for the ingress before callers are refused (-1: unlimited)."
    )
    rank_candidates: int = Field(50, ge=1, description="Retrieved candidates passed on to the ranker.")
    # False when the ranker does not beat the retriever on the full-catalog evaluation; the ranking
    # deployment still runs for switches.
    use_ranker: bool = Field(
        True,
        description="Rank the retrieved candidates; False: serve the retrieval order.",
    )
    text_weight: float = Field(
        0.5, ge=0, le=1, description="When both history and text are given: query = (1-w) history + w text."
    )
    max_body_bytes: int = Field(65_536, ge=256, description="Largest accepted request body, in bytes.")
    request_cache_size: int = Field(
        10_000, ge=1,
        description="Recent slates kept so /feedback can refer to them.",
    )
    rank_timeout_s: float = Field(5.0, gt=0, description="Seconds the ingress waits for each ranking call.")
    retrieval_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds the ingress waits for each retrieval call (a generative one may take "
        "serve.generation.timeout_s); past it: 503 + Retry-After and the call is cancelled.",
    )
    max_k: int = Field(100, ge=1, description="Most items a request may ask for.")
    max_text_length: int = Field(1000, ge=1, description="Longest accepted free-text query, in characters.")
    max_history_length: int = Field(200, ge=1, description="Most history items a request may send.")
    api_keys_env: str = Field(
        "RAYREC_API_KEYS", description="Env var holding the client API keys (comma separated).",
    )
    api_keys_file: str | None = Field(
        None,
        description="File of client API keys (one per line, # comments), beside the env var; None: none.",
    )
    require_api_key: bool = Field(
        False,
        description="Reject requests to /recommend and /feedback without a valid client key.",
    )
    # Secret env vars of the job (names matching SECRET/TOKEN/PASSWORD/KEY...) never go into the
    # Serve app config, which the dashboard shows.
    app_config_secrets: list[str] = Field(
        default_factory=list,
        description="Secret-looking env var names that may still go into the Serve app config (a private "
        "test cluster).",
    )
    # Per ingress replica: N replicas admit up to N x the rate. Only with require_api_key (no key,
    # no identity to charge).
    key_quota_per_s: float | None = Field(
        None,
        gt=0,
        description="Per-key quota on /recommend and /feedback in requests per second (past it: 429 + "
        "Retry-After); None: no quota.",
    )
    key_quota_burst: int = Field(20, ge=1, description="Requests a key may send at once after a quiet spell.")
    # Read like the client keys above but never the same list: none configured, the admin routes are 403.
    admin_api_keys_env: str = Field(
        "RAYREC_ADMIN_KEYS",
        description="Env var holding the admin keys (POST /items, /items/hide), comma separated.",
    )
    admin_api_keys_file: str | None = Field(
        None, description="File of admin keys (one per line), beside the env var; None: none."
    )
    catalog: str | None = Field(
        None, description="Where added and hidden items persist (local path or URI); None: <run_dir>/catalog."
    )
    admin_max_rows: int = Field(1000, ge=1, description="Rows per POST /items (item ids per /items/hide).")
    max_added_items: int = Field(
        100_000, ge=0,
        description="Most items added since training, every POST together.",
    )
    # 1000 rows with free text do not fit max_body_bytes.
    admin_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=256, description="Largest accepted body of the admin routes, in bytes."
    )
    admin_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Seconds to embed and persist one POST's rows; past it a 503 (the rows may still land: "
        "a retry reports them as already added).",
    )
    catalog_refresh_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between each retrieval (and generation) replica's checks of the persisted "
        "catalog: a posted item is served everywhere within about this long.",
    )
    catalog_compact_segments: int = Field(
        64, ge=2,
        description="Catalog commits (one per POST) kept as separate files before they are merged into one.",
    )
    event_log: str | None = Field(
        None,
        description="Where impressions and feedback are logged (local path or URI); None: <run_dir>/events.",
    )
    event_flush_rows: int = Field(
        64, ge=1,
        description="Buffered event rows that trigger a flush to the log.",
    )
    event_flush_interval_s: float = Field(
        2.0, gt=0,
        description="Seconds between flushes of buffered events.",
    )
    # Back-pressure instead of dropping what was logged.
    event_max_buffered_rows: int = Field(
        100_000,
        ge=1,
        description="Event rows an ingress replica holds while storage is failing; beyond it /recommend and "
        "/feedback answer 503 + Retry-After.",
    )
    default_policy: PolicyName = Field(
        "greedy",
        description="Exploration policy used when a request names none.",
    )
    # Each is a shared state actor, loaded from the run dir on first use.
    policies: list[PolicyName] | None = Field(
        None,
        description="Policies a request may name (anything else is a 422); None: every registered policy.",
    )
    policy_timeout_s: float = Field(
        2.0, gt=0,
        description="Seconds to wait for each call to a policy's shared state actor.",
    )
    policy_sync_s: float = Field(
        1.0,
        ge=0,
        description="Seconds between refreshes of each ingress replica's local copy of a policy's statistics "
        "(0: select on the shared state actor itself, one round trip a request).",
    )
    reward_min: float = Field(
        0.0,
        description="Smallest accepted /feedback reward (outside the range: 422, never learned from).",
    )
    reward_max: float = Field(1.0, description="Largest accepted /feedback reward (a click is 1).")
    simulate_requests: int = Field(
        150, ge=0,
        description="Simulated requests the main job sends to the endpoint.",
    )
    simulate_policy: str = Field(
        "epsilon_greedy",
        description="Logging policy of the main job's simulated traffic (stochastic, for off-policy "
        "evaluation).",
    )
