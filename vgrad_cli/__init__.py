"""vgrad: measure vanishing and exploding gradients, layer by layer and step by step."""

__version__ = "0.1.0"
