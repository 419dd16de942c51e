"""Converters: pure, typed functions from one input row to one output row, no I/O.

Reading, validation errors with locations, writing and counting live in `sftpack.convert`; a converter only
says what a row becomes or raises `FieldError` naming the field. `CONVERTERS` maps a dataset family name
(`sftpack prepare <family>`) to its spec.
"""

from __future__ import annotations

from sftpack.converters.base import ConverterSpec, FieldError
from sftpack.converters.gsm8k import GSM8K

CONVERTERS: dict[str, ConverterSpec] = {spec.family: spec for spec in (GSM8K,)}

__all__ = ["CONVERTERS", "ConverterSpec", "FieldError"]
