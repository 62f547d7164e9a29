"""Group 6: what mixed precision, the non-finite checks and distributed training add to the steps
that are NOT logged (issue 20). The target: nothing measurable on CPU, and no added synchronisation.

Timing. The user's loop of benchmarks/monitor.py (its MLP and Transformer, SGD, one torch thread),
every step after step 0 unlogged (`every=lambda s: s == 0`), so the loop times unlogged steps only:
  fp32      bare | Monitor(every_step=False) | Monitor() (+ the every-step tier: one fused norm of the gradients per step)
  fp16      autocast("cpu", float16) + GradScaler("cpu"), bare | Monitor(scaler=scaler) (the scaler's
            own check replaces the fused norm; scaler.update() passes through the Monitor's wrapper)
bf16 autocast adds nothing of its own to an unlogged step and is not timed. Runs alternate B V B V
..., the variants' order rotating; each ratio is the variant's loop time over the mean of the two
bare runs around it (a shared machine's drifts cancel); median and min-max over the repetitions,
and the added time per step, (ratio - 1) x the bare step. The fused gradient check is also timed
alone against the bare step (pieces(): short interleaved blocks, medians), which a few % of loop
time needs on a shared machine.

Synchronisation. Two gloo processes on CPU, DDP and FSDP2, 10 steps logged every 5th: the
collectives vgrad's own code issues (torch.distributed's all-gather and all_reduce,
counted when the caller is a vgrad_cli module), on unlogged and on logged steps, with
on_problem=None and "raise". On an unlogged step vgrad reads no tensor value (tests/test_nonfinite.py
checks: no item(), tolist(), bool(), float() from vgrad's code), so a GPU is not synchronised.

    python benchmarks/unlogged.py [--quick] [--reps N] [--steps N] [--models mlp,transformer] [--no-distributed]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import monitor as group5  # noqa: E402  (the models and data of benchmarks/monitor.py)

from vgrad_cli.threads import torch_threads  # noqa: E402

VARIANTS = {"fp32": ("bare", "nocheck", "check"), "fp16": ("bare", "scaler")}


def train(precision: str, variant: str, data: dict, steps: int) -> float:
    """One run of the loop; returns its wall time (the Monitor's construction and close() excluded)."""
    from vgrad_cli import Monitor

    with torch_threads(1), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = data["build"]()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
        mon = None
        if variant != "bare":
            mon = Monitor(model, optimizer=opt, out=tmp, every=lambda s: s == 0, on_problem=None, plots=False,
                          every_step=variant == "check", scaler=scaler if variant == "scaler" else None)
        autocast = torch.autocast("cpu", dtype=torch.float16) if precision == "fp16" else contextlib.nullcontext()
        xs, ys, batch, loss_fn = data["x"], data["y"], data["batch"], nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(1)
        t0 = None
        for step in range(steps + 1):
            if step == 1:  # step 0 (logged: the layers found, the first measurement) is not timed
                t0 = time.perf_counter()
            idx = torch.randint(len(xs), (batch,), generator=gen)
            with autocast:
                loss = loss_fn(model(xs[idx]), ys[idx])
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if mon is not None:
                mon.step(loss)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        loss.item()
        elapsed = time.perf_counter() - t0
        if mon is not None:
            mon.close()
        return elapsed


def timing(model: str, precision: str, steps: int, reps: int, quick: bool) -> dict:
    data = group5.setup(model, quick)
    variants = [v for v in VARIANTS[precision] if v != "bare"]
    for v in ("bare", *variants):
        train(precision, v, data, min(steps, 12))  # untimed warm-up: imports, first allocations
    ratios, bare = {v: [] for v in variants}, []
    for rep in range(reps):
        k = rep % len(variants)
        before = train(precision, "bare", data, steps)
        bare.append(before)
        for v in variants[k:] + variants[:k]:
            t = train(precision, v, data, steps)
            after = train(precision, "bare", data, steps)
            bare.append(after)
            ratios[v].append(t / ((before + after) / 2))
            before = after
    step_us = statistics.median(bare) / steps * 1e6
    return {"bare_step_us": step_us, "variants": {
        v: {"ratio": group5.spread(r), "added_us_per_step": (statistics.median(r) - 1) * step_us} for v, r in ratios.items()}}


def pieces(model: str, quick: bool, reps: int, n: int) -> dict:
    """The fused gradient check alone (every_step=True: one call per unlogged step) against the
    bare step it rides on, each the median over `reps` blocks of `n` calls: short blocks, interleaved,
    so a shared machine's load shifts both alike (a whole-loop ratio of a few % drowns in its noise)."""
    from vgrad_cli.measure.finite import total_norm as gradient_check

    data = group5.setup(model, quick)
    with torch_threads(1):
        torch.manual_seed(0)
        net = data["build"]()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        x, y, loss_fn = data["x"][: data["batch"]], data["y"][: data["batch"]], nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
        step()
        grads = [p.grad for p in net.parameters()]
        check, bare = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                gradient_check(grads)
            t1 = time.perf_counter()
            for _ in range(max(1, n // 10)):
                step()
            t2 = time.perf_counter()
            check.append((t1 - t0) / n * 1e6)
            bare.append((t2 - t1) / max(1, n // 10) * 1e6)
    c, b = statistics.median(check), statistics.median(bare)
    return {"check_us": c, "bare_step_us": b, "check_frac": c / b,
            "parameters": sum(p.numel() for p in net.parameters()), "tensors": len(grads)}


# ----------------------------------------------------------------------------- collectives


def _count_worker(rank, world, init_file, out, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    counts = {"n": 0}
    for name in ("all_gather_single", "all_gather_into_tensor", "all_reduce"):
        if not hasattr(dist, name):
            continue
        original = getattr(dist, name)

        def counted(*args, _original=original, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("vgrad_cli"):
                counts["n"] += 1
            return _original(*args, **kwargs)
        setattr(dist, name, counted)
    from vgrad_cli import Monitor

    found = {}
    for kind in ("ddp", "fsdp2"):
        for on_problem in (None, "raise"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
            if kind == "ddp":
                model = torch.nn.parallel.DistributedDataParallel(model)
            else:
                from torch.distributed.fsdp import fully_shard

                fully_shard(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
            per_step = []
            with Monitor(model, optimizer=opt, out=f"{out}/{kind}-{on_problem}", every=5, on_problem=on_problem, plots=False) as mon:
                for _ in range(10):
                    before = counts["n"]
                    loss = nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    mon.step(loss)
                    opt.step()
                    per_step.append(counts["n"] - before)
            found[f"{kind} on_problem={on_problem}"] = {
                "unlogged_steps": sum(c for s, c in enumerate(per_step) if s % 5),
                "per_logged_step": [c for s, c in enumerate(per_step) if s % 5 == 0]}
    if rank == 0:
        with open(results, "w") as f:
            json.dump(found, f)
    dist.barrier()
    dist.destroy_process_group()


def collectives() -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "counts.json")
        mp.spawn(_count_worker, args=(2, os.path.join(tmp, "init"), os.path.join(tmp, "runs"), results), nprocs=2)
        with open(results) as f:
            return json.load(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition: proves it works")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 7; --quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 200; --quick 20)")
    ap.add_argument("--models", default="mlp,transformer", help="comma-separated: mlp, transformer")
    ap.add_argument("--no-distributed", action="store_true", help="skip the 2-process collective count")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 7)
    steps = args.steps or (20 if args.quick else 200)
    out = {"quick": args.quick, "reps": reps, "steps": steps, "timing": {}}
    with contextlib.redirect_stdout(sys.stderr):
        models = args.models.split(",")
        for model in models:
            for precision in VARIANTS:
                out["timing"][f"{model} {precision}"] = timing(model, precision, steps, reps, args.quick)
                print(f"done: {model} {precision}", file=sys.stderr)
        out["pieces"] = {model: pieces(model, args.quick, reps, 20 if args.quick else 200) for model in models}
        if not args.no_distributed:
            out["collectives"] = collectives()
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
