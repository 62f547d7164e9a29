"""The benchmark command runs end to end in --quick mode and writes every group (no timing assertions)."""

import json
import pytest
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _numbers(d):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in d.values() if not isinstance(v, dict))


@pytest.mark.slow
def test_run_all_quick_writes_every_group(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vgrad benchmarks" in proc.stdout
    res = json.loads(out.read_text())
    assert res["quick"] is True
    g = res["groups"]
    assert set(g) == {"overhead", "startup", "sweep", "scale", "monitor"}
    # 1. ratios vgrad / bare loop, with a median and a spread
    assert set(g["overhead"]["mlp"]["ratios"]) == {"every1/mlp", "every10/mlp"}
    assert set(g["overhead"]["rnn"]["ratios"]) == {"every1/cell", "every1/fused", "every10/cell", "every10/fused"}
    for model in ("mlp", "rnn"):
        for s in g["overhead"][model]["ratios"].values():
            assert _numbers(s) and s["median"] > 0 and s["min"] <= s["median"] <= s["max"]
    # 2. start-up wall times
    assert g["startup"]["help_s"]["median"] > 0 and g["startup"]["compare_s"]["median"] > 0
    # 3. sweep speedup
    assert _numbers(g["sweep"]["speedup"]) and g["sweep"]["speedup"]["median"] > 0
    # 4. scale: time per step, memory at N and 2N, tables that grow linearly
    for model in ("mlp", "rnn"):
        r = g["scale"][model]
        assert r["s_per_step"] > 0 and r["rss_ratio"] > 0
        assert all(t["linear"] for t in r["tables"].values())
    assert "time.csv" in g["scale"]["rnn"]["tables"] and "time.csv" not in g["scale"]["mlp"]["tables"]
    # 5. the same loop bare, with Monitor and with each peer: a ratio, or "not installed"
    for model in ("mlp", "cnn", "transformer", "gpt2"):
        variants = g["monitor"][model]["variants"]
        assert set(variants) == {"every1", "every10", "tier", "auto", "lightning", "wandb", "tensorboard", "cockpit"}
        assert all(variants[v]["installed"] for v in ("every1", "every10", "tier", "auto"))
        for v in variants.values():
            assert v["installed"] is False or "failed" in v or (_numbers(v["ratio"]) and v["ratio"]["median"] > 0)
    assert "not installed" in proc.stdout or all(v["installed"] for v in g["monitor"]["mlp"]["variants"].values())


@pytest.mark.slow
def test_unlogged_benchmark_quick():
    """Group 6 (benchmarks/unlogged.py): ratios for every variant, and vgrad's collectives counted:
    none on steps that are not logged, one per logged step (two with on_problem="raise")."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "unlogged.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert set(res["timing"]) == {"mlp fp32", "mlp fp16", "transformer fp32", "transformer fp16"}
    for r in res["timing"].values():
        assert all(_numbers(v["ratio"]) and v["ratio"]["median"] > 0 for v in r["variants"].values())
    for setting, counts in res["collectives"].items():
        raise_ = setting.endswith("raise")
        assert counts == {"unlogged_steps": 0, "per_logged_step": [2 if raise_ else 1] * 2}, setting


@pytest.mark.slow
def test_tier_cost_benchmark_quick():
    """benchmarks/tier_cost.py: per model, the tier's and the bare loss reference's cost per step."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tier_cost.py"), "--quick", "--model", "mlp,cnn"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["model"] for r in rows] == ["mlp", "cnn"]
    for r in rows:
        assert r["step_us"] > 0 and r["parameters"] > 0 and r["tensors"] > 0
        assert isinstance(r["tier_us"], float) and isinstance(r["notier_us"], float)
