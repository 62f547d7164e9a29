"""vgrad: measure vanishing and exploding gradients, layer by layer and step by step.

This package's face stays small and light: nothing heavy (torch, matplotlib) is imported here.
"""

__version__ = "0.1.0"
