"""Several processes (2 gloo ranks on CPU): FSDP2 and FSDP1 record the whole model's per-layer norms,
equal to one process on the whole batch; DDP and FSDP combine δ and the activations of every rank's
share of the batch; on_problem="raise" stops every rank at the same step; what cannot be measured
(DeepSpeed ZeRO, FSDP1 without use_orig_params) is refused in one line."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vgrad_cli import GradientProblem, Monitor
from vgrad_cli.rundir.files import read_table

# compared column by column with one process on the whole batch (float32 rounding: ~1e-7)
EXACT = ("grad_norm", "grad_max_abs", "delta_norm", "weight_norm", "weight_drift", "update_ratio", "act_mean", "act_std")


def case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3), nn.Tanh(), nn.Linear(3, 2))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(32, 8, generator=g), torch.randint(0, 2, (32,), generator=g)


def wrap(model, kind):
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for m in model:
            if isinstance(m, nn.Linear):
                fully_shard(m)
        return fully_shard(model)
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        with pytest.raises(ValueError, match="use_orig_params=True"):
            Monitor(FSDP(case()[0], device_id=torch.device("cpu")), plots=False)
        return FSDP(model, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), device_id=torch.device("cpu"))
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _worker(rank, world, init_file, out, kinds):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for kind in kinds:  # one start of the processes for all three (each start costs ~5 s)
        model, x, y = case()
        model = wrap(model, kind)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor(model, optimizer=opt, out=f"{out}/{kind}", name=kind, every=1, on_problem=None, plots=False) as mon:
            for _ in range(3):
                loss = F.cross_entropy(model(x[rank::world]), y[rank::world])  # each rank: half the batch
                opt.zero_grad()
                loss.backward()
                mon.step(loss)
                opt.step()
        assert (mon.path is None) == (rank != 0)
    dist.barrier()  # both ranks done (rank 0 writes its runs) before gloo is torn down under either
    dist.destroy_process_group()


def whole_batch(out):
    """The same model and steps in one process, on the whole batch (the two halves in rank order)."""
    model, x, y = case()
    x, y = torch.cat([x[0::2], x[1::2]]), torch.cat([y[0::2], y[1::2]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=opt, out=out, name="one", every=1, on_problem=None, plots=False) as mon:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            opt.step()
    return mon.path


@pytest.mark.slow
def test_sharded_and_replicated_models_record_the_whole_models_norms(tmp_path):
    """FSDP2, FSDP1 (use_orig_params=True) and DDP, 2 ranks each on half the batch: every per-layer
    column equals one process on the whole batch (the mean of the two halves' mean losses)."""
    import torch.multiprocessing as mp

    kinds = ("fsdp2", "fsdp1", "ddp")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "runs"), kinds), nprocs=2, join=True)
    one = whole_batch(tmp_path / "one")
    for kind in kinds:
        check(tmp_path / "runs" / kind, one, kind)


def check(out, one, kind):
    (run,) = list(out.iterdir())
    got, expected = read_table(run, "layers.csv"), read_table(one, "layers.csv")
    prefix = "module." if kind == "ddp" else ""  # FSDP's wrappers leave the user's module paths
    assert [r["name"] for r in got] == [prefix + r["name"] for r in expected] and len(got) == 9
    for a, b in zip(got, expected):
        for col in EXACT:
            assert (a[col] is None) == (b[col] is None), (a["step"], a["name"], col)
            if b[col] is not None:
                assert a[col] == pytest.approx(b[col], rel=1e-5, abs=1e-12), (a["step"], a["name"], col)
    m_got, m_one = read_table(run, "metrics.csv"), read_table(one, "metrics.csv")
    assert [m["loss"] for m in m_got] == pytest.approx([m["loss"] for m in m_one], rel=1e-6)  # mean over ranks
    assert [m["grad_norm_total"] for m in m_got] == pytest.approx([m["grad_norm_total"] for m in m_one], rel=1e-5)


def _raise_worker(rank, world, init_file, out, results):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, x, y = case()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    try:
        with Monitor(ddp, optimizer=opt, out=out, name="stop", every=1, on_problem="raise", plots=False) as mon:
            for step in range(10):
                loss = F.cross_entropy(ddp(x[rank::world]), y[rank::world])
                opt.zero_grad()
                (loss * 1e6 if step == 3 else loss).backward()  # the gradient explodes at step 3
                mon.step(loss)
                opt.step()
        outcome = "finished"
    except GradientProblem as e:
        outcome = f"{e.kind} {e.step}"
    (results / f"rank{rank}").write_text(outcome)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_on_problem_raise_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 0 finds the explosion; one 1-element all-reduce tells rank 1, and both raise at step 3
    (before: rank 1 waited forever in its next DDP all-reduce)."""
    import torch.multiprocessing as mp

    results = tmp_path / "results"
    results.mkdir()
    start = time.monotonic()
    ctx = mp.spawn(_raise_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "runs"), results), nprocs=2, join=False)
    while not ctx.join(timeout=30 - (time.monotonic() - start)):
        if time.monotonic() - start > 30:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank did not stop within 30 s")
    assert [(results / f"rank{r}").read_text() for r in (0, 1)] == ["exploding 3", "exploding 3"]
    (run,) = list((tmp_path / "runs").iterdir())  # rank 0's, ended as a stop on purpose
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "exploding" in summary["stop_reason"]


def test_deepspeed_is_refused_in_one_line():
    DeepSpeedEngine = type("DeepSpeedEngine", (nn.Module,), {"__module__": "deepspeed.runtime.engine"})
    engine = DeepSpeedEngine()
    engine.fc = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="does not measure DeepSpeed") as e:
        Monitor(engine, plots=False)
    assert "\n" not in str(e.value) and "fully_shard" in str(e.value)
