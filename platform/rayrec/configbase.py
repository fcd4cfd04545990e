"""Base class shared by every config section: strict, typed, with errors that name the field."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _section_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def field_description(model: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """The description of the field at ``loc`` (a validation error's location, e.g.
    ``("serve", "max_k")``), or None when the path names no known field. A location inside a
    field's value (a list index, a dict key) resolves to that field."""
    current: type[BaseModel] | None = model
    description: str | None = None
    for part in loc:
        if current is None:  # inside a plain field's value: that field's description
            break
        if not isinstance(part, str) or part not in current.model_fields:
            return None
        info = current.model_fields[part]
        description = info.description
        current = _section_type(info.annotation)
    return description


def _flow(value: Any) -> str:
    """``value`` as a one-line YAML flow value (scalars plain or quoted, lists ``[...]``, dicts ``{...}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True).strip()
    if text.endswith("\n..."):  # a top-level scalar ends its document explicitly
        text = text[: -len("\n...")].rstrip()
    if "\n" in text:  # a multi-line string: one double-quoted line instead
        text = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=True).strip()
        text = text.removesuffix("\n...").rstrip()
    return text


def describe_yaml(model: BaseModel, width: int = 96) -> str:
    """``model`` as YAML with each field preceded by a ``# description`` comment: nested sections
    indented beneath their field, every other value one flow-style line. ``yaml.safe_load`` of the
    result equals ``model.model_dump(mode="json")``."""
    lines: list[str] = []
    _describe(model, model.model_dump(mode="json"), 0, width, lines)
    return "\n".join(lines) + "\n"


def _describe(model: BaseModel, dumped: dict[str, Any], depth: int, width: int, lines: list[str]) -> None:
    pad = "  " * depth
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        section = isinstance(value, BaseModel) and bool(type(value).model_fields)
        if section and depth == 0 and lines:
            lines.append("")  # a blank line before each top-level section
        if info.description:
            wrapped = textwrap.wrap(info.description, max(40, width - len(pad) - 2),
                                    break_long_words=False, break_on_hyphens=False)
            lines.extend(f"{pad}# {line}" for line in wrapped)
        if section:
            lines.append(f"{pad}{name}:")
            _describe(value, dumped[name], depth + 1, width, lines)
        else:
            lines.append(f"{pad}{name}: {_flow(dumped[name])}")
