"""The new-item protocol (`rayrec new-items`; a stage of `rayrec main` with
``evaluate.new_items.enabled``): what each system does for items no training stage has seen.

Everything lives under ``<run_dir>/newitems`` and is built from the run's preprocessed data:

  data/            the protocol's dataset (rayrec.data.newitems): the newest items held out
  index/           the text index over it (held-out items: release text only)
  retriever_id/    the ID-only retriever (SASRec) trained on it
  retriever_text/  the text-grounded retriever (retriever.text_init: W x_i + bounded ID part)
  tower/           the LoRA-tuned item tower on top of it (Ray Train + DeepSpeed ZeRO)
  checkpoints/     the ranker, trained on the text-grounded retriever's lists of warm items
  eval/            the full-catalog report: popularity, ALS, text retrieval, the ID-only
                   retriever, the text-grounded one with the frozen and with the tuned tower,
                   each retriever's top-N re-scored by the protocol's ranker

The retriever's other settings are the run's (``retriever``): only ``text_init`` differs
between the two, so the comparison isolates what the item text adds.
"""

from __future__ import annotations

from typing import Any

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.data.newitems import HELD_OUT_FILE, derive_new_item_dataset, load_held_out
from rayrec.data.store import load_manifest
from rayrec.evaluation.fullcatalog import run_full_catalog
from rayrec.itemtower.trainer import run_tower_training
from rayrec.itemtower.vectors import NewItemEncoder, text_grounded_retriever
from rayrec.retrieval.index import META_FILE, build_index
from rayrec.runtime import init_ray
from rayrec.seqrec.scorer import SeqRetriever
from rayrec.seqrec.trainer import run_retriever_training
from rayrec.stages import StageRunner
from rayrec.train.trainer import run_training

ROOT = "newitems"


def protocol_configs(cfg: RayrecConfig) -> dict[str, RayrecConfig]:
    """The protocol's configs: ``base`` (data, text index, evaluation), ``id`` and ``text``
    (each retriever; ``text`` also trains the tower), all under ``<run_dir>/newitems``."""
    root = cfg.path(ROOT)
    dumped = cfg.model_dump(mode="json")
    dumped |= {"run_dir": root}
    dumped["data"] = dumped["data"] | {"out": None}
    dumped["retrieval"] = dumped["retrieval"] | {"out": None}
    dumped["tower"] = dumped["tower"] | {"out": None}
    dumped["train"] = dumped["train"] | {"storage_path": None}
    # only the protocol's own ranker (trained without the held-out items) is ever evaluated
    dumped["evaluate"] = dumped["evaluate"] | {"out": None, "checkpoint": None,
                                               "rank_retrieved": cfg.evaluate.new_items.ranker}
    dumped["train"] = dumped["train"] | {"init_from": None}
    out = {"base": RayrecConfig.model_validate(dumped)}
    budget = cfg.evaluate.new_items.max_minutes or cfg.retriever.max_minutes
    for name, text_init in (("id", False), ("text", True)):
        variant = dict(dumped)
        variant["retriever"] = dumped["retriever"] | {"text_init": text_init, "out": f"{root}/retriever_{name}",
                                                      "max_minutes": budget}
        out[name] = RayrecConfig.model_validate(variant)
    return out


def evaluate_new_items(configs: dict[str, RayrecConfig]) -> dict[str, Any]:
    """The full-catalog report of the protocol (rayrec.evaluation.fullcatalog)."""
    base, text = configs["base"], configs["text"]
    retrievers = {"retriever": SeqRetriever(configs["id"].retriever_model_dir),
                  "text_retriever": text_grounded_retriever(text, "frozen")}
    describe = {
        "retriever": "ID-only SASRec: an item it never saw keeps its random initial vector, pushed down "
                     "by every training softmax, so it is practically never retrieved",
        "text_retriever": "text-grounded SASRec (W x_i + bounded ID part; a new item: W x_i, x_i its "
                          "frozen text embedding)",
    }
    pairs = [("text_retriever", "retriever"), ("text_retriever", "text_retrieval")]
    if NewItemEncoder(text).kind == "tuned":
        retrievers["text_retriever_tuned"] = text_grounded_retriever(text, "tuned")
        describe["text_retriever_tuned"] = ("the same retriever, new items' vectors from the LoRA-tuned "
                                            "item tower (rayrec.itemtower)")
        pairs += [("text_retriever_tuned", "retriever"), ("text_retriever_tuned", "text_retrieval"),
                  ("text_retriever_tuned", "text_retriever")]
    notes = {"protocol": "new_items", "new_items": _counts(base)}
    return run_full_catalog(base, retrievers, load_held_out(base.data_dir), describe, pairs, notes)


def _counts(base: RayrecConfig) -> dict[str, Any]:
    return load_manifest(base.data_dir).get("new_items", {})


def run_new_item_protocol(cfg: RayrecConfig, stages: StageRunner | None = None, required: bool = True
                          ) -> dict[str, Any] | None:
    """Build and evaluate every system of the protocol; stages are reused when unchanged.
    ``required`` False (the main job): a failed stage is recorded and the run goes on."""
    init_ray(cfg.ray)
    stages = stages or StageRunner(cfg)
    configs = protocol_configs(cfg)
    base, ni = configs["base"], cfg.evaluate.new_items
    data = ("data", "preprocess", "evaluate")
    stages.run("new-items-data", lambda: derive_new_item_dataset(cfg.data_dir, base.data_dir, ni.fraction,
                                                                 ni.min_history),
               data, outputs=[storage.join(base.data_dir, HELD_OUT_FILE)], required=required)
    stages.run("new-items-index", lambda: str(build_index(base)), (*data, "retrieval", "model"),
               outputs=[storage.join(base.index_dir, META_FILE)], required=required)
    for name in ("id", "text"):
        c = configs[name]
        stages.run(f"new-items-retriever-{name}", lambda c=c: run_retriever_training(c),
                   (*data, "retrieval", "retriever"), outputs=[c.retriever_model_dir], required=required)
    if ni.tower:
        stages.run("new-items-tower", lambda: run_tower_training(configs["text"]),
                   (*data, "retrieval", "retriever", "tower", "train"), outputs=[configs["text"].tower_dir],
                   required=required)
    if ni.ranker:  # on the text-grounded retriever's mined lists (warm items only)
        stages.run("new-items-ranker", lambda: run_training(configs["text"]),
                   (*data, "retrieval", "retriever", "model", "train"), outputs=[base.checkpoint_dir],
                   required=required)
    return stages.run("new-items-evaluate", lambda: evaluate_new_items(configs), reusable=False,
                      required=required)
