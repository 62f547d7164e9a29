"""Every vgrad benchmark in one command: a table of ratios on the console, the same in JSON.

    python benchmarks/run_all.py [--quick] [--out FILE.json] [--only overhead,startup,sweep,scale,monitor]

Groups (docs/benchmarks.md explains each and records the latest figures):
  1. overhead  vgrad's training path vs a bare PyTorch loop (MLP and tanh RNN), every measurement
               at every step and at the default cadence; ratios vgrad/bare, alternating runs.
  2. startup   `vgrad --help` and `vgrad compare A B`, as fresh processes.
  3. sweep     8 short runs with `vgrad sweep --workers 1` vs `--workers 2`.
  4. scale     depth-100 width-256 MLP and a tanh RNN over 1,000 time steps: time per step, peak
               RSS, table sizes, at N and 2N steps.
  5. monitor   one hand-written loop (MLP, residual CNN, Transformer) bare, with vgrad's Monitor at every step
               and every 10, and with each installed peer (Lightning grad_norm, W&B watch,
               TensorBoard histograms, Cockpit): ratios to the bare loop, alternating runs.
--quick shrinks everything (tiny models, 1-2 repetitions: seconds) to prove the command works; its
figures mean nothing. Timings are only worth reading on an otherwise idle machine: the load average
is recorded next to every group.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the group modules beside this file

import monitor  # noqa: E402
import overhead  # noqa: E402
import scale  # noqa: E402
import startup  # noqa: E402

GROUPS = ("overhead", "startup", "sweep", "scale", "monitor")
DEFAULT_OUT = HERE / "results" / "latest.json"
TARGETS = {  # (group, key) -> (comparison, bound)
    # issue #22: `vgrad run`, whole process: the default cadence <= 1.10x, every step <= 1.5x
    ("overhead", "mlp every1/mlp"): ("<=", 1.5),
    ("overhead", "mlp every10/mlp"): ("<=", 1.10),
    ("overhead", "rnn every1/cell"): ("<=", 1.5),
    ("overhead", "rnn every10/fused"): ("<=", 1.10),
    ("startup", "help_s"): ("<=", 0.3),
    ("startup", "compare_s"): ("<=", 1.0),
    ("sweep", "speedup"): (">=", 1.7),
    # issue #22, on every model of benchmarks/monitor.py: the default cadence <= 1.03x, the every-step
    # tier alone <= 1.02x (every=auto: its budget, 3 %); the whole table every step <= 1.5x on the MLP,
    # <= 1.15x on the GPT-2
    **{("monitor", f"{m} {every}"): ("<=", bound) for m in ("mlp", "cnn", "transformer", "gpt2")
       for every, bound in (("every10", 1.03), ("tier", 1.02), ("auto", 1.03))},
    ("monitor", "mlp every1"): ("<=", 1.5),
    ("monitor", "gpt2 every1"): ("<=", 1.15),
}


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "cpu_model": model, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads_default": torch.get_num_threads()}


# ----------------------------------------------------------------------------- the groups


def group_overhead(quick: bool) -> dict:
    if quick:
        mlp = overhead.mlp_config(steps=30, depth=3, width=16, batch=16)
        rnn = overhead.rnn_config(steps=30, hidden=8, seq_len=10, batch=8)
        reps = 1
    else:
        mlp, rnn, reps = overhead.mlp_config(), overhead.rnn_config(), 5
    out = {}
    out["mlp"] = overhead.measure("mlp", mlp, ["mlp"], [1, 10], reps, on_progress=log)
    out["rnn"] = overhead.measure("rnn", rnn, ["cell", "fused"], [1, 10], reps, on_progress=log)
    return out


def group_startup(quick: bool) -> dict:
    return startup.measure(reps=2 if quick else 7, quick=quick)


def group_sweep(quick: bool) -> dict:
    import sweep_scaling  # written with `vgrad sweep`; its sweep_seconds runs one whole command

    # full: the runs of docs/sweep.md (~3 s each), so that worker start-up does not dominate
    steps, depth, reps = (10, 2, 1) if quick else (2000, 12, 2)
    walls = {1: [], 2: []}
    runs = {1: [], 2: []}
    for rep in range(reps):  # alternate 1, 2, 1, 2 ...
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                w, r = sweep_scaling.sweep_seconds(workers, steps, depth, Path(tmp))
            walls[workers].append(w)
            runs[workers].append(r)
        log(f"sweep rep {rep + 1}/{reps}")
    speedups = [a / b for a, b in zip(walls[1], walls[2])]
    return {"runs": 8, "steps": steps, "depth": depth,
            "wall_s": {f"workers{k}": overhead.spread(v) for k, v in walls.items()},
            "runs_sum_s": {f"workers{k}": overhead.spread(v) for k, v in runs.items()},
            "speedup": overhead.spread(speedups)}


def group_scale(quick: bool) -> dict:
    out = {}
    for name, cfg, steps in (("mlp", scale.mlp_config(quick), 10 if quick else 100),
                             ("rnn", scale.rnn_config(quick), 10 if quick else 100)):
        out[name] = scale.measure(name, cfg, steps)
        log(f"scale {name} done")
    return out


def group_monitor(quick: bool) -> dict:
    reps = 1 if quick else 5
    import importlib.util

    models = [m for m in monitor.MODELS if m != "gpt2" or importlib.util.find_spec("transformers")]
    return {model: monitor.measure(model, monitor.default_steps(model, quick), reps, quick, on_progress=log)
            for model in models}


RUNNERS = {"overhead": group_overhead, "startup": group_startup, "sweep": group_sweep, "scale": group_scale,
           "monitor": group_monitor}


# ----------------------------------------------------------------------------- the table


def _fmt_spread(s: dict, unit: str = "x", digits: int = 3) -> tuple[str, str]:
    return f"{s['median']:.{digits}f}{unit}", f"{s['min']:.{digits}f}-{s['max']:.{digits}f} (n={s['n']})"


def _target(group: str, key: str, value: float) -> tuple[str, str]:
    if (group, key) not in TARGETS:
        return "", ""
    op, bound = TARGETS[(group, key)]
    ok = value <= bound if op == "<=" else value >= bound
    return f"{op} {bound:g}", "[green]yes[/]" if ok else "[red]no[/]"


def _kb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _yes(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def rows(results: dict) -> list[tuple]:
    """(group, measure, median, spread, target, met) for the console."""
    out = []
    g = results["groups"]
    if "overhead" in g:
        every = {"every1": "every step", "every10": "every 10 (default)"}
        bare = {"mlp": "bare loop", "cell": "bare cell loop", "fused": "bare fused nn.RNN"}
        for model in ("mlp", "rnn"):
            for key, s in g["overhead"][model]["ratios"].items():
                e, b = key.split("/")
                tgt, met = _target("overhead", f"{model} {key}", s["median"])
                out.append(("1 overhead", f"{model} {every[e]} / {bare[b]}", *_fmt_spread(s), tgt, met))
    if "startup" in g:
        for key, label in (("help_s", "vgrad --help"), ("compare_s", "vgrad compare A B")):
            s = g["startup"][key]
            out.append(("2 start-up", label, *_fmt_spread(s, " s"), *_target("startup", key, s["median"])))
    if "sweep" in g:
        sw = g["sweep"]
        for k in ("workers1", "workers2"):
            out.append(("3 sweep", f"8 runs --workers {k[-1]}: wall", *_fmt_spread(sw["wall_s"][k], " s", 2), "", ""))
        out.append(("3 sweep", "speedup --workers 2 vs 1", *_fmt_spread(sw["speedup"], "x", 2),
                    *_target("sweep", "speedup", sw["speedup"]["median"])))
    if "scale" in g:
        for model, r in g["scale"].items():
            shape = (f"{r['layers'] - 1} x {r['time_steps']} time steps" if model == "rnn" else f"{r['layers'] - 1} hidden")
            n, n2 = r["steps"]["N"], r["steps"]["2N"]
            out.append(("4 scale", f"{model} ({shape}): s/step, log.every 10", f"{r['s_per_step'] * 1e3:.1f} ms", "", "", ""))
            rss = r["peak_rss_mb"]
            out.append(("4 scale", f"{model} peak RSS {n} / {n2} steps", f"{rss['N']:.0f} / {rss['2N']:.0f} MB",
                        f"ratio {r['rss_ratio']:.3f}", "flat", _yes(r["rss_ratio"] <= 1.05)))
            for t, tr in r["tables"].items():
                bpr = tr["bytes_per_row"]
                out.append(("4 scale", f"{model} {t} {n} / {n2} steps", f"{_kb(tr['bytes']['N'])} / {_kb(tr['bytes']['2N'])}",
                            f"{bpr['N']:.0f} / {bpr['2N']:.0f} B/row", "linear",
                            _yes(tr["linear"] and abs(tr["bytes_per_row_ratio"] - 1) < 0.1)))
    if "monitor" in g:
        label = {"every1": "vgrad Monitor every step", "every10": "vgrad Monitor every 10",
                 "tier": "vgrad every-step tier alone", "auto": "vgrad Monitor every=auto",
                 "lightning": "Lightning grad_norm", "wandb": "W&B watch(log_freq=1), offline",
                 "tensorboard": "TensorBoard add_histogram", "cockpit": "Cockpit GradNorm"}
        for model, r in g["monitor"].items():
            for v, d in r["variants"].items():
                what = f"{model} {label[v]} / bare"
                if not d["installed"] or "failed" in d:
                    out.append(("5 monitor", what, "failed" if d["installed"] else "not installed", d.get("failed", ""), "", ""))
                    continue
                out.append(("5 monitor", what, *_fmt_spread(d["ratio"]), *_target("monitor", f"{model} {v}", d["ratio"]["median"])))
    return out


def print_table(results: dict):
    import shutil

    from rich.console import Console
    from rich.table import Table

    m = results["machine"]
    loads = ", ".join(f"{g} {v['before'][0]:.2f}" for g, v in results["load_average"].items())
    title = "vgrad benchmarks" + (" (--quick: proves the command works; the figures mean nothing)" if results["quick"] else "")
    table = Table(title=title, caption=f"{m['cpu_model']}, {m['nproc']} cores, torch {m['torch']}. "
                  f"Load average (1 min) as each group began: {loads}")
    for col in ("group", "measure", "median", "spread (min-max)", "target", "met"):
        table.add_column(col, justify="right" if col == "median" else "left", no_wrap=col != "measure")
    for r in rows(results):
        table.add_row(*r)
    Console(width=max(shutil.get_terminal_size((130, 24)).columns, 130)).print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repetitions: proves the command works")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT.relative_to(HERE.parent)})")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups to run (default: all)")
    args = ap.parse_args(argv)
    chosen = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")

    results = {"quick": args.quick, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
               "groups": {}, "load_average": {}, "seconds": {}}
    for group in chosen:
        log(f"group {group} ...")
        load_before = os.getloadavg()
        start = time.perf_counter()
        results["groups"][group] = RUNNERS[group](args.quick)
        results["seconds"][group] = round(time.perf_counter() - start, 1)
        results["load_average"][group] = {"before": [round(x, 2) for x in load_before],
                                          "after": [round(x, 2) for x in os.getloadavg()]}
    results["targets"] = {f"{g} {k}": f"{op} {b:g}" for (g, k), (op, b) in TARGETS.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print_table(results)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
