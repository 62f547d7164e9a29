"""The model kinds, and which model keys each kind takes: the rules that cross keys of the model
section (config.py validates each key on its own, then calls check_kind). No imports from the rest of
vgrad: models/, analysis/ and the CLI read these tables too.
"""

from __future__ import annotations

MODEL_KINDS = ("mlp", "cnn", "rnn", "lstm", "gru", "transformer")
RECURRENT_KINDS = ("rnn", "lstm", "gru")
SEQUENCE_KINDS = RECURRENT_KINDS + ("transformer",)  # models that read (batch, time, features)
# lstm/gru: fixed sigmoid/tanh gates, no choice; transformer: the MLP sub-layer's (GELU, as in BERT)
DEFAULT_ACTIVATION = {"mlp": "relu", "cnn": "relu", "rnn": "tanh", "transformer": "gelu"}
NORM_POSITIONS = ("post", "pre")
TRANSFORMER_DEFAULTS = {"heads": 4, "norm_position": "pre"}

SQRT_DEPTH = "1/sqrt(depth)"


def check_residual_scale(value):
    """Before pydantic's own parsing, which would take `true` for 1.0."""
    if value == SQRT_DEPTH or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and 0 < value < float("inf")):
        return value
    raise ValueError(f"must be a number > 0 or the string '{SQRT_DEPTH}' (got {value!r})")


def branch_scale(residual_scale, depth: int) -> float:
    """model.residual_scale as a number: '1/sqrt(depth)' resolved for this depth."""
    return 1.0 / depth**0.5 if residual_scale == SQRT_DEPTH else float(residual_scale)


# model keys that mean something only for some kinds (the others accept their default)
KIND_ONLY = {"activation": ("mlp", "cnn", "rnn", "transformer"), "recurrent_init": RECURRENT_KINDS,
             "recurrent_std": RECURRENT_KINDS, "forget_bias": ("lstm",), "chrono_init": ("lstm",),
             "residual_scale": ("mlp", "cnn"),
             "heads": ("transformer",), "norm_position": ("transformer",),
             # a transformer always has LayerNorm (placed by norm_position) and residual branches
             "norm": tuple(k for k in MODEL_KINDS if k != "transformer"),
             "residual": tuple(k for k in MODEL_KINDS if k != "transformer")}


def applicable(model: dict) -> dict:
    """A model section without the keys its kind ignores: what a person should read or edit."""
    kind = model.get("kind", "mlp")
    return {k: v for k, v in model.items() if kind in KIND_ONLY.get(k, (kind,))}


def check_kind(m):
    """Keys that only make sense for some model kinds (their defaults are accepted everywhere, so a
    resolved config.yaml validates again)."""
    kind = m.kind
    if kind == "rnn" and m.activation not in ("tanh", "relu"):
        raise ValueError(f"model.activation for an rnn must be tanh or relu (got '{m.activation}')")
    if kind in ("lstm", "gru") and m.activation is not None:
        raise ValueError(
            f"model.activation does not apply to model.kind {kind} (its gates are fixed sigmoid/tanh); "
            "remove it (or --set model.activation=null)"
        )
    if m.forget_bias is not None and kind != "lstm":
        raise ValueError(f"model.forget_bias applies to model.kind lstm only (got kind {kind})")
    if m.chrono_init is not None and kind != "lstm":
        raise ValueError(f"model.chrono_init applies to model.kind lstm only (got kind {kind})")
    if m.chrono_init is not None and m.forget_bias is not None:
        raise ValueError("model.chrono_init and model.forget_bias both set the forget-gate bias; choose one")
    if kind not in RECURRENT_KINDS and (m.recurrent_init != "default" or m.recurrent_std is not None):
        raise ValueError(f"model.recurrent_init and model.recurrent_std apply to rnn, lstm and gru only (got kind {kind})")
    if kind in ("cnn", "transformer") and m.init == "identity":
        # a rectangular "identity" leaves rows of zeros: units that never respond (read as dead ReLUs)
        weights = "3x3 conv weights" if kind == "cnn" else "MLP weights (width -> 4*width) and input projection"
        raise ValueError(f"model.init identity needs a square matrix; a {kind}'s {weights} are not: choose another init")
    if m.residual_scale != 1.0 and (kind not in KIND_ONLY["residual_scale"] or not m.residual):
        raise ValueError(f"model.residual_scale scales a residual branch: it needs model.residual: true and model.kind "
                         f"{' or '.join(KIND_ONLY['residual_scale'])} (got residual {str(m.residual).lower()}, kind {kind})")
    if kind in RECURRENT_KINDS and m.norm == "batch":
        raise ValueError(f"model.norm: batch does not fit inside a recurrence ({kind}); use none or layer")
    _check_transformer(m)


def _check_transformer(m):
    if m.kind != "transformer":
        for key in ("heads", "norm_position"):
            if getattr(m, key) is not None:
                raise ValueError(f"model.{key} applies to model.kind transformer only (got kind {m.kind})")
        return
    if m.width % m.heads:
        raise ValueError(f"model.heads {m.heads} must divide model.width {m.width} (each head gets width/heads units)")
    if m.norm != "none" or m.residual:
        raise ValueError("model.norm and model.residual do not apply to a transformer: it always has residual "
                         "branches and LayerNorm; place the norm with model.norm_position: post | pre")
    if m.recurrent_init != "default" or m.recurrent_std is not None:
        raise ValueError("model.recurrent_init and model.recurrent_std apply to rnn, lstm and gru only")
