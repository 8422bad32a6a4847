"""``instrument(engine)``: the composition of every engine-level feature onto the hook core."""

from __future__ import annotations

from .attach import instrument as instrument
from .attach import instrumentation_of as instrumentation_of
from .handle import Instrumentation as Instrumentation
from .options import InstrumentChanges as InstrumentChanges
from .options import InstrumentOptions as InstrumentOptions

__all__ = [
    "InstrumentChanges",
    "InstrumentOptions",
    "Instrumentation",
    "instrument",
    "instrumentation_of",
]
