"""Synthetic tasks: generated on the fly from a seed, no downloads.

Each task is a pydantic model of its own keys (its `name` is the tag) with a `make(seed)` method
returning a TaskData. To add a task, write that class in the module that fits (static.py for
fixed-size inputs; sequence tasks go beside it) and list it in TASK_TYPES.
"""

from __future__ import annotations

from .base import TaskData
from .static import Blobs, Parity, Spirals, Teacher

TASK_TYPES = (Teacher, Spirals, Parity, Blobs)
TASK_NAMES = tuple(t.model_fields["name"].default for t in TASK_TYPES)

__all__ = ["TaskData", "TASK_TYPES", "TASK_NAMES"]
