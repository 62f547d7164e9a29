"""Several processes, one picture: DistributedDataParallel, FSDP2 (`fully_shard`) and FSDP1
(`FullyShardedDataParallel(use_orig_params=True)`).

On a logged step every rank measures what it holds: its share of the batch (δ, activations, the
loss) and, under sharding, its shards of the parameters and gradients (a DTensor's `.to_local()`,
FSDP1's flat views). The per-layer figures then travel together: ONE all-gather of one flat tensor
per logged step, after which every rank holds every rank's figures and combines them the same way:

- a norm over parameter elements (grad_norm, weight_norm, the update's and the drift's, the totals)
  is sqrt(sum over ranks of the squares) under sharding; under DDP the ranks hold the same replica:
  rank 0's;
- a norm over the batch (δ): each rank holds its share, and the gradient DDP and FSDP apply is the
  mean over ranks of the ranks' gradients, so δ of the whole batch is sqrt(sum of squares) / ranks;
- activation statistics: the mean over ranks (equal shares of the batch), the std by the law of
  total variance (the mean of the ranks' variances plus the variance of their means); the dead,
  saturated and unresponsive fractions are the mean of the ranks' fractions (a unit dead on one
  rank's share and alive on another's counts half);
- largest values (grad_max_abs, the forward finiteness check, a skipped step) the max over ranks,
  the loss the mean;
- ratios (weight_drift, update_ratio) are computed again from the combined norms.

A gather, not an all-reduce: it carries sums, maxima and means in one collective. The loss scale
is rank 0's; the spectral radius of a recurrent weight needs the whole matrix: not measured under
sharding. Every rank must hand over the same layout: the same modules called (and, for time.csv,
the same number of time steps) on every rank.
"""

from __future__ import annotations

import torch

# wrapper modules whose names FSDP1 and activation checkpointing insert into module paths
WRAPPERS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")

SHARDED_SQ = ("grad_norm", "weight_norm", "_drift", "_old", "_upd", "_w0", "grad_norm_total", "grad_norm_clipped",
              "view_grad_norm", "view_weight_norm", "recent_grad_norms", "recent_grad_clipped")
RATIOS = ("weight_drift", "update_ratio", "view_weight_drift", "view_update_ratio", "view_old")
BATCH_SQ = ("delta_norm", "view_delta_norm", "time_delta_norm", "time_cell_grad_norm")
MEAN = ("act_mean", "act_saturated_frac", "act_dead_frac", "act_unresponsive_frac", "loss", "recent_losses")
MAX = ("grad_max_abs", "view_grad_max_abs", "_out", "_cadence")
NOT_SHARDED = ("whh_spectral_radius", "whh_sigma_max")  # need the whole W_hh


def clean_name(name: str) -> str:
    """A module path without the wrappers' own names: FSDP1's `_fsdp_wrapped_module.0._fsdp_wrapped_module`
    is the user's `0`."""
    return ".".join(p for p in name.split(".") if p not in WRAPPERS)


def world() -> tuple[int, int]:
    """(this process's rank, the number of ranks); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharding(model, optimizer=None) -> str | None:
    """"fsdp2" (DTensor parameters), "fsdp1" (FullyShardedDataParallel with use_orig_params=True) or
    None (whole parameters: one process, or DDP). Refuses what it cannot measure, in one line."""
    for obj in (model, optimizer):
        if obj is not None and type(obj).__module__.split(".")[0] == "deepspeed":
            raise ValueError(f"vgrad's Monitor does not measure DeepSpeed ({type(obj).__name__}): ZeRO keeps the "
                             "gradients in its own partitioned buffers, not in each parameter's .grad; use FSDP2 "
                             "(torch.distributed.fsdp.fully_shard), FSDP1 with use_orig_params=True, or DDP")
    fsdp1 = [m for m in model.modules() if type(m).__name__ == "FullyShardedDataParallel"]
    if any(not getattr(m, "_use_orig_params", True) for m in fsdp1):
        raise ValueError("FSDP1 without use_orig_params=True flattens every parameter of a unit into one: vgrad "
                         "needs each parameter; wrap with FullyShardedDataParallel(..., use_orig_params=True) "
                         "or use FSDP2 (fully_shard)")
    if any(is_dtensor(p) for p in model.parameters()):
        return "fsdp2"
    return "fsdp1" if fsdp1 else None


def is_dtensor(t) -> bool:
    return hasattr(t, "to_local")


def local(t):
    """The part of a tensor this rank holds: a DTensor's local shard, else the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def full_numels(model) -> dict:
    """id(parameter) -> its number of elements in the whole model (FSDP1's views hold only this rank's
    part; a DTensor's numel() is already the whole)."""
    out = {}
    for m in model.modules():
        flat = getattr(m, "_flat_param", None)
        if flat is not None and getattr(flat, "_params", None) is not None:
            out.update({id(p): n for p, n in zip(flat._params, flat._numels)})
    return out


def combine(stats: dict, ranks: int, sharded: bool, view=None) -> dict:
    """Every rank's statistics, combined (module docstring); ONE all-gather. Every rank
    must call it with the same keys and shapes; keys it does not know stay this rank's own."""
    import torch.distributed as dist

    keys = [k for k in sorted(stats) if _gathered(k, sharded)]
    parts = [stats[k].detach().double().reshape(-1) for k in keys]
    flat = torch.cat(parts)
    table = flat.new_empty(ranks * flat.numel())
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the new name (torch 2.10+)
    gather(table, flat)
    columns = table.view(ranks, -1).split([p.numel() for p in parts], dim=1)
    got = dict(zip(keys, columns))
    out = {k: v for k, v in stats.items() if k not in NOT_SHARDED or not sharded}
    for k, col in got.items():
        if k in SHARDED_SQ:
            v = col.square().sum(0).sqrt() if sharded else col[0]
        elif k in BATCH_SQ:
            v = col.square().sum(0).sqrt() / ranks
        elif k == "act_std":
            means = got["act_mean"]
            v = (col.square().mean(0) + (means - means.mean(0)).square().mean(0)).sqrt()
        elif k in MEAN:
            v = col.mean(0)
        elif k in MAX:
            v = col.amax(0)
        else:  # the ratios of a replicated model: rank 0's
            v = col[0]
        out[k] = v.reshape(stats[k].shape)
    if sharded:
        _ratios(out, view)
    return out


def _gathered(key: str, sharded: bool) -> bool:
    if key in SHARDED_SQ + BATCH_SQ + MEAN + MAX + ("act_std",):
        return True
    return key in RATIOS and not sharded  # sharded: computed again from the combined norms


def _ratios(s: dict, view) -> None:
    """The ratios of a sharded model from its combined norms (each rank's ratio means nothing)."""
    s["weight_drift"] = s["_drift"] / s["_w0"]
    if "_upd" in s:
        s["update_ratio"] = s["_upd"] / s["_old"]
    if view is not None and "view_grad_norm" in s:
        s["view_weight_drift"] = view._sum(s["_drift"]) / view._sum(s["_w0"])
        if "_upd" in s:
            s["view_old"] = view._sum(s["_old"])
            s["view_update_ratio"] = view._sum(s["_upd"]) / s["view_old"]


def settle(probe, host: dict) -> None:
    """After a sharded step's transfer: the rows whose weights start at 0 (no drift ratio), from the
    whole model's initial norms (a rank's own shard may be empty)."""
    w0 = host.get("_w0")
    if w0 is None:
        return
    probe.no_drift = {i for i, v in enumerate(w0) if v == 0}
    if probe.view is not None:
        probe.view.no_drift = {k for k, r in enumerate(probe.view.rows) if all(w0[i] == 0 for i in r.members)}


def agree(code: int, device) -> int:
    """One small collective: the largest `code` any rank holds (0: nothing). Rank 0's decision to
    stop, shared so that every rank stops at the same step instead of waiting for rank 0 forever."""
    import torch.distributed as dist

    flag = torch.tensor([code], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
