"""vgrad: measure vanishing and exploding gradients, layer by layer and step by step.

This package's face stays small and light: nothing heavy (torch, matplotlib) is imported here.
"""

from .errors import GradientProblem  # no torch: a plain exception
from .vocab import VERSION as __version__

__all__ = ["Monitor", "GradientProblem", "__version__"]


def __getattr__(name: str):
    # `from vgrad_cli import Monitor` imports torch; `import vgrad_cli` (the CLI's start) must not
    if name == "Monitor":
        from .monitor.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'vgrad_cli' has no attribute {name!r}")
