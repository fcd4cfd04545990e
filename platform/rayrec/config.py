"""The one typed configuration behind every job, the CLI and Serve.

A YAML file (or nothing: every field has a default that runs on the embedded synthetic
world and MiniLM backbone) is validated into :class:`RayrecConfig`. Dotted overrides
(``train.lr=1e-4``) are applied before validation, so they get the same checks.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from rayrec.configbase import Section, field_description
from rayrec.data.config import DataConfig, PreprocessConfig
from rayrec.errors import ConfigError
from rayrec.evaluation.config import EvalConfig
from rayrec.explore.config import ExploreConfig
from rayrec.generative.config import GeneratorConfig
from rayrec.itemtower.config import TowerConfig
from rayrec.models.config import ModelConfig
from rayrec.retrieval.config import RetrievalConfig
from rayrec.seqrec.config import RetrieverConfig
from rayrec.serving.config import ServeConfig
from rayrec.tracking.config import TrackingConfig
from rayrec.train.config import TrainConfig
from rayrec.tuning.config import TuneConfig


class RayConfig(Section):
    """How to reach Ray: an existing cluster (address or RAY_ADDRESS) or a local one."""

    address: str | None = Field(
        None,
        description="Ray cluster address (e.g. auto); None: RAY_ADDRESS when set, else start a local Ray.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray; None: every core.")
    object_store_memory: int | None = Field(
        None, ge=78_643_200, description="Object store size of a local Ray, in bytes; None: Ray's default."
    )
    # A local Ray's dashboard is ~1 GB of processes: Serve's declarative API needs it, i.e.
    # switching a local endpoint's adapter in place. Off: the endpoint is deployed with serve.run.
    include_dashboard: bool = Field(False, description="Start a local Ray's dashboard.")
    # Ray Serve's data plane on a Ray this process starts (a cluster's is set where it starts:
    # `ray start` with the same environment, see rayrec.runtime.serve_data_plane_env).
    #   grpc     RAY_SERVE_THROUGHPUT_OPTIMIZED: gRPC between deployments, user code on each
    #            replica's event loop; HTTP still through Serve's Python proxy on serve.port
    #   haproxy  grpc + RAY_SERVE_ENABLE_HA_PROXY: HAProxy on serve.port sends each request
    #            straight to an ingress replica (needs the haproxy binary on every node)
    #   auto     haproxy when `haproxy` is on PATH, else grpc;  default: Serve's own defaults
    serve_data_plane: Literal["auto", "haproxy", "grpc", "default"] = Field(
        "auto",
        description="Ray Serve's data plane on a Ray this process starts: grpc, haproxy (grpc + HAProxy), "
        "auto (haproxy when the binary is on PATH, else grpc) or default (Serve's own).",
    )


class FeedbackConfig(Section):
    """The feedback loop (`rayrec feedback`): fine-tune from the event log, compare, promote."""

    max_steps: int | None = Field(None, ge=1, description="Fine-tuning steps; None: train.max_steps.")
    min_improvement: float = Field(
        0.0,
        description="Promote when candidate - current validation NDCG@10 exceeds this (negative: promote "
        "unless worse by more than that).",
    )
    switch_endpoint: bool = Field(
        True,
        description="Switch a running serve.app_name to the promoted adapter.",
    )


class RayrecConfig(Section):
    """Top-level config. All artifacts of a run live under ``run_dir`` unless a section overrides."""

    run_dir: str = Field(
        "rayrec_output",
        description="Run directory (local path or URI) under which every artifact is written.",
    )
    ray: RayConfig = Field(
        default_factory=RayConfig,
        description="How to reach Ray: a cluster or a local one.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Where the interaction log comes from.")
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig,
        description="The preprocessing pipeline (labels, filters, split, negatives).",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="The ranker: backbone, head, loss and LoRA.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Scaling, optimisation and checkpointing of training jobs."
    )
    evaluate: EvalConfig = Field(
        default_factory=EvalConfig,
        description="Offline evaluation: split, candidates, metrics.",
    )
    retriever: RetrieverConfig = Field(
        default_factory=RetrieverConfig, description="The sequential (SASRec-style) retriever."
    )
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig, description="Item text embeddings and the FAISS index."
    )
    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="LoRA-tuning the generative recommender."
    )
    tower: TowerConfig = Field(
        default_factory=TowerConfig,
        description="LoRA-tuning the text-grounded item tower.",
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig,
        description="The Ray Serve recommendation endpoint.",
    )
    explore: ExploreConfig = Field(
        default_factory=ExploreConfig, description="Exploration policies and the bandit experiment."
    )
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig,
        description="The feedback loop: fine-tune from the event log, compare, promote.",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Experiment tracking in MLflow.",
    )
    tune: TuneConfig = Field(
        default_factory=TuneConfig,
        description="Validation-only tuning of the retriever (`rayrec tune`, Ray Tune).",
    )

    # Resolved artifact locations: one place decides where each stage reads and writes.
    def path(self, *parts: str) -> str:
        """A location under ``run_dir``: a URI (``s3://...``) joined with "/", a local path made
        absolute. Read and write it with :mod:`rayrec.storage` (local or remote alike)."""
        if "://" in self.run_dir:
            return "/".join([self.run_dir.rstrip("/"), *parts])
        return str(Path(self.run_dir).expanduser().resolve().joinpath(*parts))

    def _under_run_dir(self, override: str | None, name: str) -> str:
        return override or self.path(name)

    @property
    def data_dir(self) -> str:
        return self._under_run_dir(self.data.out, "data")

    @property
    def checkpoint_dir(self) -> str:
        return self._under_run_dir(self.train.storage_path, "checkpoints")

    @property
    def index_dir(self) -> str:
        return self._under_run_dir(self.retrieval.out, "index")

    @property
    def retriever_dir(self) -> str:
        return self._under_run_dir(self.retriever.out, "retriever")

    @property
    def retriever_model_dir(self) -> str:
        """The servable retriever (best checkpoint by validation), written by its training."""
        return f"{self.retriever_dir.rstrip('/')}/model"

    @property
    def retriever_index_dir(self) -> str:
        """The FAISS index over the retriever's item vectors."""
        return f"{self.retriever_dir.rstrip('/')}/index"

    @property
    def generator_dir(self) -> str:
        return self._under_run_dir(self.generator.out, "generator")

    @property
    def generator_adapter_dir(self) -> str:
        """The tuned generator's LoRA adapter (best by validation loss), written by its training."""
        return f"{self.generator_dir.rstrip('/')}/adapter"

    @property
    def tower_dir(self) -> str:
        """The LoRA-tuned item tower (text -> retriever vector), written by `rayrec train-tower`."""
        return self._under_run_dir(self.tower.out, "tower")

    @property
    def tune_dir(self) -> str:
        """Tuning trials and their record (``record.json``), written by `rayrec tune`."""
        return self._under_run_dir(self.tune.out, "tune")

    @property
    def eval_dir(self) -> str:
        return self._under_run_dir(self.evaluate.out, "eval")

    @property
    def event_log_dir(self) -> str:
        return self._under_run_dir(self.serve.event_log, "events")

    @property
    def explore_dir(self) -> str:
        return self._under_run_dir(self.explore.out, "explore")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid rayrec config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        got_txt = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        description = field_description(RayrecConfig, e["loc"])
        what = f" ({description.rstrip('.')})" if description else ""
        lines.append(f"  - {field}: {msg}{got_txt}{what}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads '1e-4' as a string
            value = float(value)
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key overrides set."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> RayrecConfig:
    """Load and validate a config file (None: all defaults), applying dotted overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        raw, source = loaded, str(p)
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " + overrides"
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str = "dict") -> RayrecConfig:
    """Validate a plain dict into a RayrecConfig, raising ConfigError naming the bad fields."""
    try:
        return RayrecConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
