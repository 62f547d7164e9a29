"""What the every-step tier costs, per step, inside the real loop (issue #22).

Whole-loop ratios (benchmarks/monitor.py) move by a few percent between runs on a shared machine,
more than the tier costs. This times only what the tier adds: the median time of `mon.step(loss)` +
`opt.step()` on steps that are not logged, with the tier (Monitor's default), without it
(`every_step=False`: a reference to the loss) and bare (`opt.step()` alone), on the models of
benchmarks/monitor.py, one torch thread, 3 alternating repetitions.

    python benchmarks/tier_cost.py                    # mlp, cnn, transformer, gpt2 (if transformers is installed)
    python benchmarks/tier_cost.py --model mlp --steps 300
    python benchmarks/tier_cost.py --quick            # tiny sizes: proves it runs

One JSON line per model: tier_us / notier_us (microseconds per step over bare) and their share of
the bare step (step_us).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor import setup  # noqa: E402

from vgrad_cli import Monitor  # noqa: E402
from vgrad_cli.threads import torch_threads  # noqa: E402


def run(data: dict, steps: int, every, **options) -> float:
    """Median microseconds of mon.step() + opt.step() over the steps after the first 10."""
    torch.manual_seed(0)
    model = data["build"]()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    xs, ys, b = data["x"], data["y"], data["batch"]
    g = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        mon = Monitor(model, optimizer=opt, out=tmp, every=every, on_problem=None, plots=False, **options) \
            if every else None
        inner, whole = [], []
        for s in range(steps):
            t0 = time.perf_counter()
            idx = torch.randint(len(xs), (b,), generator=g)
            loss = loss_fn(model(xs[idx]), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            if mon is not None:
                mon.step(loss)
            opt.step()
            t2 = time.perf_counter()
            if s >= min(10, steps // 2):
                inner.append(t2 - t1)
                whole.append(t2 - t0)
        if mon is not None:
            mon.close()
    return statistics.median(inner) * 1e6, statistics.median(whole) * 1e6


def measure(model: str, steps: int, quick: bool) -> dict:
    data = setup(model, quick)
    res: dict = {}
    for _ in range(3):  # alternating, so that a slow drift of the machine hits all three alike
        for name, every, options in (("bare", None, {}), ("tier", 10 ** 9, {}), ("notier", 10 ** 9, {"every_step": False})):
            res.setdefault(name, []).append(run(data, steps, every, **options))
    med = {k: (statistics.median(i for i, _ in v), statistics.median(w for _, w in v)) for k, v in res.items()}
    params = list(data["build"]().parameters())
    step_us = med["bare"][1]
    tier, notier = med["tier"][0] - med["bare"][0], med["notier"][0] - med["bare"][0]
    return {"model": model, "parameters": sum(p.numel() for p in params), "tensors": len(params), "steps": steps,
            "step_us": round(step_us, 1), "tier_us": round(tier, 1), "notier_us": round(notier, 1),
            "tier_share": round(tier / step_us, 4), "notier_share": round(notier / step_us, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="comma-separated: mlp, cnn, transformer, gpt2 (default: all)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    models = args.model.split(",") if args.model else ["mlp", "cnn", "transformer", "gpt2"]
    if importlib.util.find_spec("transformers") is None:
        models = [m for m in models if m != "gpt2"]
    default = {"mlp": 300, "cnn": 100, "transformer": 100, "gpt2": 40}
    with torch_threads(1):
        for model in models:
            steps = args.steps or (12 if args.quick else default[model])
            print(json.dumps(measure(model, steps, args.quick)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
