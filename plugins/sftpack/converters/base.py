"""The shape every converter shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


class FieldError(Exception):
    """Raised by a converter: `field` of the row is missing or wrong; `problem` says how."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}': {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class ConverterSpec:
    """A dataset family: how to read it from a hub, how one row converts, and its dataset_info entry.

    `entry` is the LLaMA-Factory entry for one written split, without `file_name`; the pipeline adds that.
    """

    family: str
    convert: Callable[[Mapping[str, Any]], dict[str, Any]]
    hub_subset: str | None
    splits: tuple[str, ...]
    entry: Mapping[str, Any]
    description: str = ""
    hub_ids: tuple[str, ...] = field(default_factory=tuple)
