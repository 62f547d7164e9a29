"""Weight-initialization registry: name -> function(weight, activation, init_std).

`init_std` is the std for `normal`, the bound for `uniform` and the gain for every other scheme
(kaiming_* default to the activation's gain, the rest to torch's default gain of 1).
To add an initialization, add one function and one entry to INITS.
"""

from __future__ import annotations

from typing import Callable

from .activations import Activation

# Documented defaults for the two schemes that have no natural scale.
DEFAULT_NORMAL_STD = 0.01
DEFAULT_UNIFORM_BOUND = 0.05


def _gain(init_std: float | None) -> float:
    return 1.0 if init_std is None else init_std


def _kaiming(fn_name: str):
    def init(w, act: Activation, init_std):
        import torch.nn.init as I

        gain = act.kaiming_gain() if init_std is None else init_std
        # torch's kaiming_* take only a nonlinearity name; 'linear' gives std 1/sqrt(fan_in),
        # which we scale by the activation's gain (e.g. sqrt(2) for ReLU, 5/3 for tanh).
        getattr(I, fn_name)(w, mode="fan_in", nonlinearity="linear")
        w.mul_(gain)

    return init


def _lecun_normal(w, act, init_std):
    import torch.nn.init as I

    I.kaiming_normal_(w, mode="fan_in", nonlinearity="linear")
    w.mul_(_gain(init_std))


def _xavier(fn_name: str):
    def init(w, act, init_std):
        import torch.nn.init as I

        getattr(I, fn_name)(w, gain=_gain(init_std))

    return init


def _orthogonal(w, act, init_std):
    import torch.nn.init as I

    I.orthogonal_(w, gain=_gain(init_std))


def _normal(w, act, init_std):
    import torch.nn.init as I

    I.normal_(w, 0.0, DEFAULT_NORMAL_STD if init_std is None else init_std)


def _uniform(w, act, init_std):
    import torch.nn.init as I

    b = DEFAULT_UNIFORM_BOUND if init_std is None else init_std
    I.uniform_(w, -b, b)


def _identity(w, act, init_std):
    """Ones on the diagonal (times init_std, default 1): IRNN's recurrent init (Le, Jaitly & Hinton 2015)."""
    import torch.nn.init as I

    I.eye_(w)
    w.mul_(_gain(init_std))


def _default(w, act, init_std):
    """Leave torch's own nn.Linear initialization in place (kaiming_uniform with a=sqrt(5))."""


INITS: dict[str, Callable] = {
    "default": _default,
    "xavier_uniform": _xavier("xavier_uniform_"),
    "xavier_normal": _xavier("xavier_normal_"),
    "kaiming_uniform": _kaiming("kaiming_uniform_"),
    "kaiming_normal": _kaiming("kaiming_normal_"),
    "lecun_normal": _lecun_normal,
    "orthogonal": _orthogonal,
    "normal": _normal,
    "uniform": _uniform,
    "identity": _identity,
}
