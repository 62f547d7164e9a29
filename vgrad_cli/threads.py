"""torch's intra-op thread count, set for a block of code and restored after it."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None or 0: as it is), then restore the count.

    Small models gain little from intra-op threads, and OpenMP's spinning threads collapse when
    another process shares the cores (measured on 2 cores: 60x slower with 2 threads): training,
    the init spread, the ablation probe and the Jacobian ask for one."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
