"""Group 5, Monitor vs the peers: the same hand-written training loop, bare and with each tool.

Two user-written models, each trained by the same loop (sampled batch, forward, cross-entropy,
zero_grad, backward, [the tool's line], SGD step) on one torch thread:
  mlp  - nn.Sequential of 20 x (Linear(128, 128), ReLU) and Linear(128, 10), batch 128;
  cnn  - a small residual CNN: a 3x3 stem conv, 4 BasicBlocks of 16 channels (conv-BN-F.relu-conv-BN,
         identity shortcut, F.relu) on 16x16 inputs, global average pool, Linear(16, 10), batch 32;
  transformer - a Pre-LN encoder: Linear(16, 64) embedding plus learned positions, torch's
         nn.TransformerEncoder of 4 layers (width 64, 4 heads, MLP 128, no dropout) over 32 time
         steps, Linear(64, 10) on the last position, batch 32.
Variants, each measured the way its users use it:
  bare        nothing; the loss is read once at the end
  every1      vgrad Monitor(every=1): mon.step(loss) after backward, every statistic every step
  every10     vgrad Monitor(every=10), the default cadence
  lightning   lightning.pytorch.utilities.grad_norm(model, norm_type=2) every step
  wandb       wandb.init(mode="offline"); wandb.watch(model, log="gradients", log_freq=1);
              wandb.log({"loss": loss}) every step (that call commits the gradient histograms)
  tensorboard SummaryWriter.add_histogram of every gradient and add_scalar of the loss, every step
  cockpit     Cockpit with its GradNorm quantity every step (BackPACK-extended model and loss)
A peer that is not installed (`pip install -e ".[peers]"`, docs/benchmarks.md) is reported as such.

Timing: the training loop only (wall clock, and the process's CPU time as a cross-check that a
busy machine disturbs less); each tool's set-up (Monitor(), wandb.init + watch, SummaryWriter(),
Cockpit()) and tear-down (close(), finish()) are timed apart, once per run, and reported beside.
Variants alternate with a bare run between every two (B V1 B V2 B ...), the order of the variants
rotating from one repetition to the next; each ratio is the variant's time over the mean of the two
bare runs around it, so slow drifts of the machine's load cancel. Median and min-max are reported.

    python benchmarks/monitor.py [--quick] [--model mlp,cnn,transformer] [--variants bare,every1,...] [--reps N] [--steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vgrad_cli.threads import torch_threads

MODELS = ("mlp", "cnn", "transformer", "gpt2")
VARIANTS = ("every1", "every10", "tier", "auto", "lightning", "wandb", "tensorboard", "cockpit")
PEERS = {  # variant -> the modules it needs
    "lightning": ("lightning",),
    "wandb": ("wandb",),
    "tensorboard": ("tensorboard",),
    "cockpit": ("cockpit", "backpack"),
}
RECORDS = {
    "bare": "nothing (the loss read once at the end)",
    "every1": "vgrad's whole layers.csv every step: per layer grad norm and max, delta norm, weight norm "
              "and drift, update ratio, activation mean/std/dead/saturated/unresponsive; loss, total norm",
    "every10": "the same every 10th step (vgrad's default); the other steps: the every-step tier",
    "tier": "the every-step tier alone (step 0's table, then per step: loss, total gradient norm, lr -> steps.csv)",
    "auto": "vgrad Monitor(every=\"auto\"): the whole table on steps spaced to cost at most 3 % of the time, + the tier",
    "every10_notier": "every10 without the every-step tier (every_step=False): the loss alone between logged steps",
    "lightning": "L2 norm of every parameter's gradient and their total (a dict of tensors)",
    "wandb": "a 64-bin histogram of every parameter's gradient + the loss, offline run files",
    "tensorboard": "a histogram of every parameter's gradient + the loss, event file",
    "cockpit": "L2 norm of every parameter's gradient (GradNorm), kept in memory",
}


# ----------------------------------------------------------------------------- the user's models


def mlp(depth=20, width=128, classes=10) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ResCNN(nn.Module):
    def __init__(self, blocks=4, channels=16, in_channels=3, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(*[BasicBlock(channels) for _ in range(blocks)])
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(x.mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self, layers=4, width=64, heads=4, features=16, seq_len=32, classes=10):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x) + self.pos)[:, -1])


class GPT2(nn.Module):
    """transformers' GPT2LMHeadModel built from a config; the logits as (batch, vocab, time), the layout
    nn.CrossEntropyLoss takes with (batch, time) targets, so the shared loop trains it unchanged."""

    def __init__(self, layers, width, heads, seq_len, vocab):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=seq_len, vocab_size=vocab,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        self.gpt2 = GPT2LMHeadModel(cfg)

    def forward(self, x):
        return self.gpt2(input_ids=x).logits.transpose(1, 2)


def setup(model: str, quick: bool) -> dict:
    """The model factory, its data (pre-generated, the same for every variant) and the batch size."""
    g = torch.Generator().manual_seed(0)
    if model == "mlp":
        depth, width, batch = (3, 16, 16) if quick else (20, 128, 128)
        x = torch.randn(8192 if not quick else 256, width, generator=g)
        build = lambda: mlp(depth, width)  # noqa: E731
        shape = {"depth": depth, "width": width, "batch": batch}
    elif model == "cnn":
        blocks, channels, size, batch = (1, 4, 8, 8) if quick else (4, 16, 16, 32)
        x = torch.randn(2048 if not quick else 64, 3, size, size, generator=g)
        build = lambda: ResCNN(blocks, channels)  # noqa: E731
        shape = {"blocks": blocks, "channels": channels, "size": size, "batch": batch}
    elif model == "transformer":
        layers, width, heads, seq_len, batch = (1, 8, 2, 4, 4) if quick else (4, 64, 4, 32, 32)
        x = torch.randn(1024 if not quick else 32, seq_len, 16, generator=g)
        build = lambda: Encoder(layers, width, heads, 16, seq_len)  # noqa: E731
        shape = {"layers": layers, "width": width, "heads": heads, "seq_len": seq_len, "batch": batch}
    elif model == "gpt2":  # transformers' GPT-2 from a config (no download), next-token loss
        layers, width, heads, seq_len, batch, vocab = (1, 16, 2, 8, 2, 64) if quick else (4, 256, 4, 64, 8, 512)
        tokens = torch.randint(vocab, (512 if not quick else 16, seq_len + 1), generator=g)
        build = lambda: GPT2(layers, width, heads, seq_len, vocab)  # noqa: E731
        shape = {"layers": layers, "width": width, "heads": heads, "seq_len": seq_len, "batch": batch, "vocab": vocab}
        return {"build": build, "x": tokens[:, :-1], "y": tokens[:, 1:], "batch": batch, "shape": shape}
    else:
        raise ValueError(f"unknown model {model!r}: mlp, cnn or transformer")
    y = torch.randint(10, (len(x),), generator=g)
    return {"build": build, "x": x, "y": y, "batch": batch, "shape": shape}


# ----------------------------------------------------------------------------- the tools


class Tool:
    """What a variant adds to the user's loop. start/stop are timed apart from the loop."""

    def start(self, model, opt, tmp):
        return model

    def backward(self, step, loss, out, y, opt):
        loss.backward()

    def after_backward(self, step, loss):
        pass

    def stop(self):
        pass


class VgradMonitor(Tool):
    def __init__(self, every, **options):
        self.every, self.options = every, options

    def start(self, model, opt, tmp):
        from vgrad_cli import Monitor

        self.mon = Monitor(model, optimizer=opt, out=tmp, name=f"bench-every{self.every}", every=self.every,
                           on_problem=None, plots=False, **self.options)
        return model

    def after_backward(self, step, loss):
        self.mon.step(loss)

    def stop(self):
        self.mon.close()


class Lightning(Tool):
    def start(self, model, opt, tmp):
        from lightning.pytorch.utilities import grad_norm

        self.grad_norm, self.model = grad_norm, model
        return model

    def after_backward(self, step, loss):
        self.norms = self.grad_norm(self.model, norm_type=2)  # what on_before_optimizer_step hands to log_dict


class Wandb(Tool):
    def start(self, model, opt, tmp):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(mode="offline", dir=tmp, project="vgrad-bench", settings=wandb.Settings(
            silent=True, console="off", x_disable_stats=True))
        wandb.watch(model, log="gradients", log_freq=1)
        return model

    def after_backward(self, step, loss):
        self.wandb.log({"loss": loss.detach()}, step=step)  # commits the step's gradient histograms

    def stop(self):
        self.wandb.unwatch()
        self.run.finish()


class TensorBoard(Tool):
    def start(self, model, opt, tmp):
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.named = SummaryWriter(log_dir=tmp), list(model.named_parameters())
        return model

    def after_backward(self, step, loss):
        self.writer.add_scalar("loss", loss.detach(), step)
        for name, p in self.named:
            self.writer.add_histogram(f"grad/{name}", p.grad, step)

    def stop(self):
        self.writer.close()


class CockpitTool(Tool):
    def start(self, model, opt, tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cockpit imports pkg_resources (deprecated)
            from backpack import extend
            from cockpit import Cockpit, quantities
            from cockpit.utils import schedules

        model = extend(model)
        self.cockpit = Cockpit(model.parameters(), quantities=[quantities.GradNorm(schedules.linear(1))])
        self.batch = None
        return model

    def backward(self, step, loss, out, y, opt):
        cp = self.cockpit
        with cp(step, info={"batch_size": out.shape[0], "loss": loss, "optimizer": opt}):
            loss.backward(create_graph=cp.create_graph(step))


TOOLS = {"bare": Tool, "every1": lambda: VgradMonitor(1), "every10": lambda: VgradMonitor(10),
         "tier": lambda: VgradMonitor(10 ** 9), "auto": lambda: VgradMonitor("auto"),
         "every10_notier": lambda: VgradMonitor(10, every_step=False),
         "lightning": Lightning, "wandb": Wandb, "tensorboard": TensorBoard, "cockpit": CockpitTool}


def installed(variant: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in PEERS.get(variant, ()))


# ----------------------------------------------------------------------------- the loop


def train(variant: str, data: dict, steps: int) -> dict:
    """One run of the user's loop with `variant`'s tool: {"loop_s", "cpu_s", "setup_s", "close_s"}."""
    with torch_threads(1):
        torch.manual_seed(0)
        model = data["build"]()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loss_fn = nn.CrossEntropyLoss()
        tool = TOOLS[variant]()
        xs, ys, batch = data["x"], data["y"], data["batch"]
        n = len(xs)
        gen = torch.Generator().manual_seed(1)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            model = tool.start(model, opt, tmp)
            if variant == "cockpit":
                from backpack import extend

                loss_fn = extend(loss_fn)
            t1, c1 = time.perf_counter(), time.process_time()
            for step in range(steps):
                idx = torch.randint(n, (batch,), generator=gen)
                x, y = xs[idx], ys[idx]
                out = model(x)
                loss = loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                tool.backward(step, loss, out, y, opt)
                tool.after_backward(step, loss)
                opt.step()
            final = loss.item()  # a user's loop reads the loss at least once
            t2, c2 = time.perf_counter(), time.process_time()
            tool.stop()
            t3 = time.perf_counter()
        if final != final:
            raise RuntimeError(f"{variant}: the loss became NaN")
        return {"loop_s": t2 - t1, "cpu_s": c2 - c1, "setup_s": t1 - t0, "close_s": t3 - t2}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(model: str, steps: int, reps: int, quick: bool = False, variants=VARIANTS, on_progress=None) -> dict:
    """Alternate bare and each variant (B V1 B V2 ... B), `reps` times, the variants' order rotating."""
    data = setup(model, quick)
    present = [v for v in variants if installed(v)]
    missing = [v for v in variants if not installed(v)]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        failed = {}
        for v in ["bare", *present]:  # one untimed warm-up of each: imports, first-call allocations
            try:
                train(v, data, min(steps, 12))
            except Exception as e:  # a peer that breaks (a new release, a missing dependency) is reported
                if v in ("bare", "every1", "every10"):
                    raise
                failed[v] = f"{type(e).__name__}: {e}"[:200]
        present = [v for v in present if v not in failed]
        runs = {v: [] for v in ["bare", *present]}
        ratios = {v: {"loop": [], "cpu": []} for v in present}
        for rep in range(reps):
            k = rep % len(present) if present else 0
            order = present[k:] + present[:k]
            before = train("bare", data, steps)
            runs["bare"].append(before)
            for v in order:
                r = train(v, data, steps)
                after = train("bare", data, steps)
                runs[v].append(r)
                runs["bare"].append(after)
                for key, field in (("loop", "loop_s"), ("cpu", "cpu_s")):
                    ratios[v][key].append(r[field] / ((before[field] + after[field]) / 2))
                before = after
            if on_progress:
                on_progress(f"monitor {model} rep {rep + 1}/{reps}")
    bare_step = statistics.median(r["loop_s"] for r in runs["bare"]) / steps
    out = {"model": model, "shape": data["shape"], "steps": steps, "reps": reps, "threads": 1,
           "bare_ms_per_step": bare_step * 1e3, "variants": {}}
    for v in variants:
        if v in missing or v in failed:
            out["variants"][v] = {"installed": v not in missing, "records": RECORDS[v]}
            if v in failed:
                out["variants"][v]["failed"] = failed[v]
            continue
        rs = runs[v]
        out["variants"][v] = {
            "installed": True, "records": RECORDS[v],
            "ratio": spread(ratios[v]["loop"]), "cpu_ratio": spread(ratios[v]["cpu"]),
            "ms_per_step": spread([r["loop_s"] / steps * 1e3 for r in rs]),
            "extra_ms_per_step": statistics.median(r["loop_s"] for r in rs) / steps * 1e3 - bare_step * 1e3,
            "setup_s": spread([r["setup_s"] for r in rs]), "close_s": spread([r["close_s"] for r in rs]),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    for model in args.model.split(","):
        if model == "gpt2" and importlib.util.find_spec("transformers") is None:
            print(json.dumps({"model": model, "installed": False, "needs": "transformers"}))
            continue
        steps = args.steps or default_steps(model, args.quick)
        reps = args.reps or (1 if args.quick else 5)
        res = measure(model, steps, reps, args.quick, tuple(args.variants.split(",")),
                      on_progress=lambda m: print(f"[load {os.getloadavg()[0]:.2f}] {m}", file=sys.stderr))
        print(json.dumps(res, indent=1))
    return 0


def default_steps(model: str, quick: bool) -> int:
    if quick:
        return 12
    return {"mlp": 400, "cnn": 200, "transformer": 200, "gpt2": 100}[model]


if __name__ == "__main__":
    sys.exit(main())
