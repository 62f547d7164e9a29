"""Synthetic tasks: generated on the fly from a seed, no downloads.

Each task is a pydantic model of its own keys (its `name` is the tag) with a `make(seed)` method
returning a TaskData. To add a task, write that class in the module that fits (static.py for
fixed-size inputs, sequence.py for sequences) and list it in TASK_TYPES.
"""

from __future__ import annotations

from .base import TaskData
from .sequence import Adding, Copy, TemporalOrder
from .static import Blobs, Parity, Spirals, Teacher

TASK_TYPES = (Teacher, Spirals, Parity, Blobs, Adding, Copy, TemporalOrder)
TASK_NAMES = tuple(t.model_fields["name"].default for t in TASK_TYPES)

__all__ = ["TaskData", "TASK_TYPES", "TASK_NAMES"]
