"""Synthetic tasks, generated from a seed (no downloads); losses.py maps a task's loss to torch.
Imports pydantic (torch only inside `make` and losses.py), nothing else of vgrad_cli. To add a task,
write its pydantic class in static.py (fixed-size inputs), sequence.py or images.py and list it in
TASK_TYPES.
"""

from __future__ import annotations

from .base import TaskData
from .images import Shapes
from .sequence import Adding, Copy, TemporalOrder
from .static import Blobs, Parity, Spirals, Teacher

TASK_TYPES = (Teacher, Spirals, Parity, Blobs, Shapes, Adding, Copy, TemporalOrder)
TASK_NAMES = tuple(t.model_fields["name"].default for t in TASK_TYPES)

__all__ = ["TaskData", "TASK_TYPES", "TASK_NAMES"]
