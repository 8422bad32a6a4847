"""``instrument(engine)``: the composition of every engine-level feature onto the hook core."""

from __future__ import annotations

from .attach import instrument as instrument
from .attach import instrumentation_of as instrumentation_of
from .handle import Instrumentation as Instrumentation

__all__ = ["Instrumentation", "instrument", "instrumentation_of"]
