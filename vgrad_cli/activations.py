"""Activation registry: name -> how to build it and how to read its statistics.

To add an activation, add one entry to ACTIVATIONS. torch is imported lazily so that the
config schema (which lists these names) stays cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Activation:
    torch_class: str                      # class name in torch.nn
    kwargs: dict = field(default_factory=dict)
    # Gain for kaiming_* inits, as torch.nn.init.calculate_gain(*gain) (or a float).
    gain: tuple | float = ("linear",)
    # Flat "saturated" regions: a unit counts as saturated when its output is below lo or above hi.
    # None means the activation does not saturate (act_saturated_frac is then 0).
    saturated_outside: tuple[float, float] | None = None
    # Outputs are never negative (mean |a| is then mean a: one pass fewer in the statistics).
    nonnegative: bool = False

    def build(self, width: int):
        import torch.nn as nn

        kwargs = dict(self.kwargs)
        if self.torch_class == "PReLU":
            kwargs["num_parameters"] = width  # one learnable slope per unit
        return getattr(nn, self.torch_class)(**kwargs)

    def kaiming_gain(self) -> float:
        if isinstance(self.gain, float):
            return self.gain
        from torch.nn.init import calculate_gain

        return calculate_gain(*self.gain)


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("Sigmoid", gain=("sigmoid",), saturated_outside=(0.01, 0.99), nonnegative=True),
    "tanh": Activation("Tanh", gain=("tanh",), saturated_outside=(-0.99, 0.99)),
    "relu": Activation("ReLU", gain=("relu",), nonnegative=True),
    "leaky_relu": Activation("LeakyReLU", {"negative_slope": 0.01}, gain=("leaky_relu", 0.01)),
    "prelu": Activation("PReLU", {"init": 0.25}, gain=("leaky_relu", 0.25)),
    # torch has no gain for these; they behave like ReLU for positive inputs, so use ReLU's.
    "elu": Activation("ELU", gain=("relu",)),
    "gelu": Activation("GELU", gain=("relu",)),
    "silu": Activation("SiLU", gain=("relu",)),
    # SELU's self-normalising fixed point needs variance 1/fan_in (torch's docs: use 'linear').
    "selu": Activation("SELU", gain=("linear",)),
    "linear": Activation("Identity", gain=("linear",)),
}
