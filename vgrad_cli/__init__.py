"""vgrad: measure vanishing and exploding gradients, layer by layer and step by step.

This package's face stays small and light: nothing heavy (torch, matplotlib) is imported here.
"""

from .errors import GradientProblem  # no torch: a plain exception
from .vocab import VERSION as __version__

__all__ = ["Monitor", "GradientProblem", "load_run", "__version__"]


def __getattr__(name: str):
    # `from vgrad_cli import Monitor` imports torch, load_run pandas; `import vgrad_cli` (the CLI's start) neither
    if name == "Monitor":
        from .monitor.monitor import Monitor

        return Monitor
    if name == "load_run":
        from .report.notebook import load_run

        return load_run
    raise AttributeError(f"module 'vgrad_cli' has no attribute {name!r}")
