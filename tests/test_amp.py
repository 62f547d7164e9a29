"""Mixed precision: fp16 autocast with a GradScaler and bf16 autocast on CPU. The recorded gradient is
the unscaled one (what the optimizer step uses), the loss scale is recorded, steps the scaler skipped
are recorded as skipped and read as no problem, unless they persist; activation statistics of half
precision activations are computed in float32. Also the framework callbacks' own scalers."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vgrad_cli import Monitor
from vgrad_cli.monitor.scaler import PERSISTENT_SKIPS
from vgrad_cli.rundir.files import read_table
from vgrad_cli.threads import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # fp16 on CPU with 2 threads on a shared 2-core machine: ~10x slower
        yield


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[m for i in range(6) for m in (nn.Linear(16 if i == 0 else 32, 32), nn.Tanh())], nn.Linear(32, 4))


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g)
    return x, (x @ torch.randn(16, 4, generator=g)).argmax(1)


def unscaled_norms(model, scale: float) -> dict:
    """The independent computation: per Linear (its module path), the norm of its gradient / scale."""
    return {n: math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in m.parameters())) / scale
            for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def fp16_run(tmp_path, steps, every, overflow=(), seed=0, capsys=None):
    """A 6-layer MLP under autocast(cpu, float16) + GradScaler("cpu"), mon.step(loss) right after
    scaler.scale(loss).backward(); `overflow`: steps whose scaled loss is multiplied by inf (the
    scaler finds inf gradients and skips them). Returns the Monitor and the true unscaled norms."""
    model, (x, y) = mlp(seed), data(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    truth = {}
    with Monitor(model, optimizer=opt, out=tmp_path, name="fp16", every=every, scaler=scaler, plots=False) as mon:
        for step in range(steps):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            scaled = scaler.scale(loss)
            (scaled * float("inf") if step in overflow else scaled).backward()
            truth[step] = (unscaled_norms(model, scaler.get_scale()), scaler.get_scale())
            mon.step(loss)
            scaler.step(opt)
            scaler.update()
    assert "update" not in vars(scaler)  # the Monitor's wrapper of scaler.update is gone after close()
    return mon, truth


@pytest.mark.slow
def test_fp16_gradscaler_records_the_unscaled_gradient_and_the_skipped_steps(tmp_path, capsys):
    mon, truth = fp16_run(tmp_path, steps=101, every=10, overflow=(25, 40))
    rows, metrics = read_table(mon.path, "layers.csv"), read_table(mon.path, "metrics.csv")
    for step in (0, 10, 20, 30, 50, 60, 70, 80, 90, 100):
        expected, scale = truth[step]
        got = {r["name"]: r["grad_norm"] for r in rows if r["step"] == step}
        assert got == {n: pytest.approx(v, rel=1e-5) for n, v in expected.items()}, step
        m = next(m for m in metrics if m["step"] == step)
        assert m["grad_norm_total"] == pytest.approx(math.sqrt(sum(v * v for v in expected.values())), rel=1e-5)
        assert m["loss_scale"] == scale and m["skipped"] == 0
    # the unscaled gradient is ~0.1-1; the scaled one 65536 times that (the 11,812 for ~0.18)
    assert max(r["grad_norm"] for r in rows) < 10
    # an unlogged skipped step (25) and a logged one (40): a row each, no layer rows, the scale it used
    skipped = {m["step"]: m for m in metrics if m["skipped"] == 1}
    assert sorted(skipped) == [25, 40] and 40 not in {r["step"] for r in rows}
    assert skipped[40]["grad_norm_total"] is None and skipped[25]["loss_scale"] == truth[25][1]
    assert truth[26][1] == truth[25][1] / 2  # the scaler halved the scale after the skip
    s = json.loads((mon.path / "summary.json").read_text())
    assert s["steps_skipped"] == 2 and s["status"] == "completed" and s["diverged_step"] is None
    # read healthy, with no warning (seeds 0-3: final loss 0.008-0.009 vs ln 4 = 1.39 at step 0)
    assert s["verdict"] == "healthy", s["verdict_reason"]
    assert "first_nonfinite" not in s and "vgrad:" not in capsys.readouterr().err


def test_skips_that_persist_are_a_divergence(tmp_path, capsys):
    steps = 10 + PERSISTENT_SKIPS + 5
    mon, _ = fp16_run(tmp_path, steps=steps, every=10, overflow=range(10, steps))
    s = mon.summary
    assert s["status"] == "diverged" and s["diverged_step"] == 10
    err = capsys.readouterr().err
    assert f"skipped {PERSISTENT_SKIPS} steps in a row from step 10" in " ".join(err.split())


def test_bf16_autocast_gradient_and_float32_activation_statistics(tmp_path):
    model, (x, y) = mlp(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acts = {}
    model[1].register_forward_hook(lambda m, a, out: acts.__setitem__("tanh0", out.detach()))
    truth = {}
    with Monitor(model, optimizer=opt, out=tmp_path, name="bf16", every=1, plots=False) as mon:
        for step in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            truth[step] = (unscaled_norms(model, 1.0), acts["tanh0"])
            mon.step(loss)
            opt.step()
    rows = read_table(mon.path, "layers.csv")
    for step, (expected, act) in truth.items():
        at = {r["name"]: r for r in rows if r["step"] == step}
        assert {n: r["grad_norm"] for n, r in at.items()} == {n: pytest.approx(v, rel=1e-5) for n, v in expected.items()}
        assert act.dtype == torch.bfloat16
        a = act.double()  # the float64 statistics of the bf16 activation; a bf16 sum would be ~1e-2 off
        assert at["0"]["act_mean"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
        assert at["0"]["act_std"] == pytest.approx(float(a.std(unbiased=False)), rel=1e-5)


def test_a_disabled_scaler_changes_nothing_and_a_wrong_object_is_refused(tmp_path):
    model = mlp()
    with Monitor(model, out=tmp_path, plots=False, scaler=torch.amp.GradScaler("cpu", enabled=False)) as mon:
        assert mon.scaler is None
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        Monitor(model, out=tmp_path, plots=False, scaler=object())


@pytest.mark.slow
def test_lightning_16_mixed_uses_the_precision_plugins_scaler(tmp_path):
    """Lightning's "16-mixed" (forced onto CPU through its MixedPrecision plugin with a CPU GradScaler):
    the callback finds the plugin's scaler; Lightning unscales before on_before_optimizer_step, so the
    recorded gradient is the one read there; a forced overflow is a skipped step."""
    import lightning as L
    from lightning.pytorch.plugins import MixedPrecision
    from torch.utils.data import DataLoader, TensorDataset

    from vgrad_cli.integrations.lightning import VgradCallback

    seen = {}

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            loss = F.cross_entropy(self.net(batch[0]), batch[1])
            return loss * float("inf") if self.trainer.global_step == 3 else loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Reference(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen[trainer.global_step] = unscaled_norms(pl_module, 1.0)

    x, y = data()
    scaler = torch.amp.GradScaler("cpu")
    vgrad = VgradCallback(out=tmp_path, name="pl16", every=1, on_problem=None, plots=False)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[vgrad, Reference()],
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=64))
    rows, metrics = read_table(vgrad.path, "layers.csv"), read_table(vgrad.path, "metrics.csv")
    assert [m["skipped"] for m in metrics] == [0, 0, 0, 1, 0, 0]
    assert metrics[0]["loss_scale"] == 65536 and metrics[4]["loss_scale"] == 32768
    for step in (0, 1, 2, 4, 5):
        got = {r["name"]: r["grad_norm"] for r in rows if r["step"] == step}
        assert got == {n: pytest.approx(v, rel=1e-5) for n, v in seen[step].items()}, step
    assert json.loads((vgrad.path / "summary.json").read_text())["steps_skipped"] == 1


@pytest.mark.slow
def test_huggingface_trainer_uses_accelerates_scaler(tmp_path):
    """accelerate makes a GradScaler only for fp16 on an accelerator; here one is given to the
    Trainer's accelerator on CPU (fp32 compute, scaled loss), so the real code path runs: the callback
    finds it on the AcceleratedOptimizer and measures at the end of backward, before accelerate
    unscales: the recorded gradient is the scaled one divided by the scale."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from test_integrations import Rows, tiny_bert
    from vgrad_cli.integrations.huggingface import VgradCallback

    seen = {}

    class Reference(TrainerCallback):  # before the update; accelerate has not unscaled (no clipping)
        def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
            from torch.amp.grad_scaler import OptState

            scale = optimizer.scaler.get_scale()
            stage = optimizer.scaler._per_optimizer_states[id(optimizer.optimizer)]["stage"]
            grads = {id(p): p.grad / (scale if stage is OptState.READY else 1) for p in model.parameters() if p.grad is not None}
            seen[state.global_step] = (math.sqrt(sum(float(g.double().norm()) ** 2 for g in grads.values())), scale)

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, max_grad_norm=0, report_to=[], use_cpu=True, save_strategy="no",
                             logging_steps=1000, disable_tqdm=True, dataloader_num_workers=0)
    vgrad = VgradCallback(out=tmp_path, name="bert16", every=1, on_problem=None, plots=False)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Rows(), callbacks=[vgrad, Reference()])
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with vgrad:
        trainer.train()
    metrics = read_table(vgrad.path, "metrics.csv")
    assert [m["loss_scale"] for m in metrics] == [seen[s][1] for s in range(3)] == [1024.0] * 3
    assert [m["grad_norm_total"] for m in metrics] == [pytest.approx(seen[s][0], rel=1e-5) for s in range(3)]


@pytest.mark.parametrize("every", ["auto", 2])
def test_a_fused_optimizers_skip_on_a_logged_step_is_counted_once(tmp_path, every):
    """A fused optimizer steps even when the scaler found an overflow (it skips on the device): an
    overflow on logged step 0 is one skipped step, whatever the cadence has planned since."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    x, y = data()
    with Monitor(model, opt, out=tmp_path, every=every, scaler=scaler, on_problem=None, plots=False) as mon:
        for step in range(4):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if step == 0:
                next(model.parameters()).grad[0, 0] = float("inf")
            mon.step(loss)
            scaler.step(opt)
            scaler.update()
    metrics = read_table(mon.path, "metrics.csv")
    assert [r["step"] for r in metrics].count(0) == 1
    assert mon.summary["steps_skipped"] == 1
