"""The tuned generator's LoRA adapter: written by the training workers, found by evaluation
and by the endpoint's generation deployment.

An adapter directory is peft's own (``adapter_config.json`` + weights: what
``PeftModel.from_pretrained`` and :meth:`rayrec.generative.lists.Generator.load` read) plus
``rayrec_generator.json``: the backbone and prompt length it was tuned with, and the step and
validation loss it was taken at. A prompt with another number of titles than the tuning's is
a different input distribution, so evaluation warns about one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rayrec import storage
from rayrec.raytrain.checkpoint import gather_trainable

log = logging.getLogger(__name__)

META_FILE = "rayrec_generator.json"
PEFT_CONFIG = "adapter_config.json"
TUNED = "tuned"  # evaluate.generative.adapter: the adapter `rayrec train-generator` published


def save_adapter(engine, out_dir: str, meta: dict, rank: int) -> None:
    """Every rank gathers the LoRA weights (a collective under ZeRO-3); rank 0 writes them."""
    state = gather_trainable(engine)
    if rank == 0:
        engine.module.save_pretrained(out_dir, state_dict=state)
        (Path(out_dir) / META_FILE).write_text(json.dumps(meta, indent=1))


def resolve_adapter(cfg, requested: str | None, backbone: str, history_items: int,
                    field: str = "evaluate.generative.adapter") -> str | None:
    """An adapter setting (``field``: evaluation's or the endpoint's) as a local directory:
    None (zero-shot), ``tuned`` (the run's ``<generator_dir>/adapter``) or a directory / URI of
    a peft adapter. Warns when it was tuned for another backbone or prompt length."""
    if not requested:
        return None
    where = cfg.generator_adapter_dir if requested == TUNED else requested
    if not storage.is_file(storage.join(where, PEFT_CONFIG)):
        hint = ": run `rayrec train-generator` first" if requested == TUNED else ""
        raise FileNotFoundError(f"{field}: no LoRA adapter at {where}{hint}")
    local = storage.local_copy(where)
    meta_path = Path(local) / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    for key, value in (("history_items", history_items), ("backbone", backbone)):
        if key in meta and meta[key] != value:
            log.warning("adapter %s was tuned with %s=%r, %s is %r", where, key, meta[key],
                        field.rsplit(".", 1)[0] + "." + key, value)
    return local
