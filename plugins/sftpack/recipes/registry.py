"""The step registry: `@register("name")` on a small dataclass of the step's parameters.

Two kinds of step:
- a *map* step changes one row (or, with `EXPANDS`, makes several from one) and may set tags; it runs
  while rows stream past, in worker processes when the pass is parallel;
- a *select* step decides which rows stay (and may set tags, e.g. `split`) from small per-row features
  that its collectors gather while rows stream past; its decision runs once, over all rows, in the main
  process.
Tags are small per-row values (language, category, variant, split) kept beside the rows, not in them:
steps read them like fields, and they never reach the written files (a `format` step can copy one in).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sftpack.errors import SftpackError

STEPS: dict[str, type["Step"]] = {}


def register(name: str):
    def decorate(cls: type["Step"]) -> type["Step"]:
        if name in STEPS:
            raise ValueError(f"step '{name}' registered twice")
        cls.NAME = name
        STEPS[name] = cls
        return cls
    return decorate


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (sha256 of their text: the same on every machine and run)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(kw_only=True)
class Step:
    """Keys every step accepts: `inputs` (only rows of these recipe inputs; others pass unchanged)."""

    NAME: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    inputs: list[str] | None = None
    # set by the planner
    _index: int = 0
    _seed: int = 0
    _tags: frozenset = field(default_factory=frozenset)  # tag names declared by earlier steps
    _where: Any = None

    def creates_tags(self) -> tuple[str, ...]:
        """Tag names this step sets."""
        return ()

    def uses_tokenizer(self) -> str | None:
        return None

    def heavy(self) -> bool:
        """True when the step costs well over 10 us a row (tokenizing, MinHash): inputs are then cut into
        small chunks so that every worker gets some."""
        return False

    def check(self, plan) -> None:
        """Cross-step checks at load time (e.g. a tag this step reads was set before it)."""

    def label(self) -> str:
        return f"steps[{self._index}] ({self.NAME})"

    def error(self, message: str) -> SftpackError:
        return SftpackError(f"{self._where}: {message}" if self._where else f"{self.label()}: {message}")

    def require_tag(self, name: str, plan, hint: str) -> None:
        if name not in self._tags:
            raise self.error(f"tag '{name}' is not set by any earlier step ({hint}). Tags set so far: "
                             f"{sorted(self._tags)}")

    def numpy_rng(self, *extra: Any) -> np.random.Generator:
        return np.random.default_rng(derive_seed(self._seed, self._index, self.NAME, *extra))


@dataclass(kw_only=True)
class MapStep(Step):
    KIND: ClassVar[str] = "map"
    MODIFIES_ROW: ClassVar[bool] = True   # False: only sets tags (the row's bytes are written unchanged)
    EXPANDS: ClassVar[bool] = False       # True: apply() returns a list of (row, tag updates)

    def prepare(self) -> None:
        """Load files once per process, before the first row (runs in the main process, before fork)."""

    def apply(self, row: dict, ctx: "RowContext") -> Any:
        raise NotImplementedError


@dataclass(kw_only=True)
class SelectStep(Step):
    KIND: ClassVar[str] = "select"

    def collectors(self) -> dict[str, Any]:
        """Name -> a fresh Collector, one set per chunk of rows."""
        return {}

    def select(self, ctx: "SelectContext") -> None:
        raise NotImplementedError


class RowContext:
    """What a map step knows about the row it is given: its input, its tags, and a private RNG."""

    __slots__ = ("input", "tags", "file", "number", "sub", "recipe_seed")

    def __init__(self, input_name: str, tags: dict, file: int, number: int, sub: int, recipe_seed: int):
        self.input, self.tags, self.file, self.number, self.sub = input_name, tags, file, number, sub
        self.recipe_seed = recipe_seed

    def rng(self, step: Step) -> random.Random:
        """Seeded by the recipe seed, the step and the row's origin: the same row gets the same draw
        whatever is filtered around it, in any worker."""
        return random.Random(f"{step._seed}:{step._index}:{self.file}:{self.number}:{self.sub}")


@dataclass
class Tag:
    codes: np.ndarray   # int32, one per row
    vocab: list          # code -> value


@dataclass
class SelectContext:
    """What a select step decides on. `mask` (rows still in) is changed in place; `active` marks the rows
    this step applies to (still in, and from the step's `inputs`)."""

    mask: np.ndarray
    active: np.ndarray
    features: dict[str, Any]
    tags: dict[str, Tag]
    origin: Any                     # callable: row index -> "file: line N"
    question: np.ndarray            # int64 id of the source row (variants of one question share it)
    details: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    new_tags: dict = field(default_factory=dict)
    progress: bool = False          # show a progress bar in a long decision (near_dedup)

    def group(self, step: Step, name: str) -> Tag:
        """The per-row values of `name`: a tag if one is set, else the step's collected field values."""
        if name in step._tags:
            return self.tags[name]
        codes, vocab = self.features[f"by:{name}"]
        return Tag(codes, vocab)
