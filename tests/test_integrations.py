"""Framework callbacks with the real frameworks: a Lightning Trainer fit and Hugging Face Trainer runs
on a tiny BERT built from a config (no downloads). Each checks per-layer grad_norm against an
independent computation at the same point (before the framework's clipping), that steps are
optimizer steps, and that `vgrad diagnose` / `vgrad show` read the run. Also the Monitor behaviours
the callbacks rely on: optimizer.step(closure), forward passes without autograd."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def layer_norms(model, grads: dict, names) -> dict:
    """The independent computation: per layer (a module path of layers.csv), the root of the sum of the
    squared per-parameter gradient norms of that module's own parameters."""
    out = {}
    for name in names:
        module = model.get_submodule(name)
        sq = sum(grads[id(p)].double().norm().item() ** 2 for p in module.parameters(recurse=False) if id(p) in grads)
        out[name] = math.sqrt(sq)
    return out


def snapshot(model) -> dict:
    return {id(p): p.grad.detach().clone() for p in model.parameters() if p.grad is not None}


def total(grads: dict) -> float:
    return math.sqrt(sum(g.double().norm().item() ** 2 for g in grads.values()))


def check_run(path, model, pre: dict, post: dict, logged_steps, steps_completed, cli):
    """pre/post: {optimizer step: per-parameter gradients} before / after the framework's clipping."""
    for f in ("layers.csv", "metrics.csv", "summary.json", "config.yaml"):
        assert (path / f).exists(), f
    rows, metrics = read_csv(path / "layers.csv"), read_csv(path / "metrics.csv")
    assert sorted({int(r["step"]) for r in rows}) == logged_steps
    assert [int(m["step"]) for m in metrics] == logged_steps
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == steps_completed
    for step in logged_steps:
        at = [r for r in rows if int(r["step"]) == step]
        expected = layer_norms(model, pre[step], [r["name"] for r in at])
        for r in at:
            assert float(r["grad_norm"]) == pytest.approx(expected[r["name"]], rel=1e-5), (step, r["name"])
            assert r["update_ratio"] not in ("", None), (step, r["name"])
        m = next(m for m in metrics if int(m["step"]) == step)
        # every parameter is in exactly one row; the totals before and after clipping
        assert float(m["grad_norm_total"]) == pytest.approx(total(pre[step]), rel=1e-5)
        assert float(m["grad_norm_clipped"]) == pytest.approx(total(post[step]), rel=1e-5)
        assert float(m["grad_norm_clipped"]) < float(m["grad_norm_total"])  # clipping was active
        assert math.isfinite(float(m["loss"]))
    res = cli("diagnose", path)
    assert res.exit_code == 0, res.output
    assert json.loads((path / "diagnosis.json").read_text())
    res = cli("show", path)
    assert res.exit_code == 0, res.output


def test_importing_vgrad_does_not_import_the_frameworks():
    code = ("import sys, vgrad_cli, vgrad_cli.integrations, vgrad_cli.monitor.monitor; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'transformers', 'accelerate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_callbacks_check_their_options_when_made():
    from vgrad_cli.integrations.huggingface import VgradCallback as HF
    from vgrad_cli.integrations.lightning import VgradCallback as PL

    for cls in (HF, PL):
        with pytest.raises(ValueError, match="every"):
            cls(every=0)
        with pytest.raises(ValueError, match="on_problem"):
            cls(on_problem="shout")


# ---------------------------------------------------------------------------------------- Lightning
def test_lightning_trainer_fit(tmp_path, cli):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from vgrad_cli.integrations.lightning import VgradCallback

    pre, post = {}, {}

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):  # runs while a logged step's hooks are armed
            x, y = batch
            self.log("val", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            post[self.trainer.global_step] = snapshot(self)

    class Reference(L.Callback):  # the same hook point, read independently
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pre[trainer.global_step] = snapshot(pl_module)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    vgrad = VgradCallback(out=tmp_path, name="pl", every=2, on_problem=None)
    model = Net()
    trainer = L.Trainer(max_steps=5, accumulate_grad_batches=2, gradient_clip_val=0.01, val_check_interval=2,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[vgrad, Reference()])
    trainer.fit(model, loader, DataLoader(TensorDataset(x, y), batch_size=32))
    assert trainer.global_step == 5  # optimizer steps, each of 2 batches
    rows = read_csv(vgrad.path / "layers.csv")
    assert [r["name"] for r in rows if r["step"] == "0"] == ["net.0", "net.2", "net.4"]
    check_run(vgrad.path, model, pre, post, [0, 2, 4], 5, cli)
    # the Trainer's clipping, told to Monitor: config.yaml says it (the diagnosis reads it)
    assert yaml.safe_load((vgrad.path / "config.yaml").read_text())["train"]["clip_norm"] == 0.01


def test_lightning_exception_ends_the_run_as_failed(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from vgrad_cli.integrations.lightning import VgradCallback

    class Breaks(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("data went bad")
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    vgrad = VgradCallback(out=tmp_path, every=1, on_problem=None, plots=False)
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[vgrad])
    with pytest.raises(RuntimeError, match="data went bad"):
        trainer.fit(Breaks(), DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4))
    summary = json.loads((vgrad.path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_completed"] == 2
    assert [int(m["step"]) for m in read_csv(vgrad.path / "metrics.csv")] == [0, 1]


# ---------------------------------------------------------------------------------------- Hugging Face
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=16, num_labels=2))


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=32, length=8):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_huggingface_trainer(tmp_path, cli, accumulate):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from vgrad_cli.integrations.huggingface import VgradCallback

    pre, post = {}, {}

    class RecordingTrainer(Trainer):  # the gradients the Trainer is about to clip, read independently
        def _clip_grad_norm(self, model):
            pre[self.state.global_step] = snapshot(model)
            return super()._clip_grad_norm(model)

    class AfterClipping(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            post[state.global_step] = snapshot(model)

    model = tiny_bert()
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=5, per_device_train_batch_size=4,
                             gradient_accumulation_steps=accumulate, learning_rate=1e-3, max_grad_norm=0.05,
                             eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000,
                             disable_tqdm=True, dataloader_num_workers=0)
    vgrad = VgradCallback(out=tmp_path, name="bert", every=2, on_problem=None)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=Rows(), eval_dataset=Rows(8),
                               callbacks=[vgrad, AfterClipping()])
    with vgrad:
        trainer.train()
    assert trainer.state.global_step == 5
    rows = read_csv(vgrad.path / "layers.csv")
    names = [r["name"] for r in rows if r["step"] == "0"]
    assert names[0] == "bert.embeddings.word_embeddings" and names[-1] == "classifier"
    assert "bert.encoder.layer.1.output.dense" in names
    check_run(vgrad.path, model, pre, post, [0, 2, 4], 5, cli)
    assert yaml.safe_load((vgrad.path / "config.yaml").read_text())["train"]["clip_norm"] == 0.05


class PlainLM(nn.Module):
    """A model whose forward takes no **kwargs: the Trainer passes no num_items_in_batch and divides
    each micro-batch's (mean) loss by gradient_accumulation_steps itself."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(64, 16), nn.Linear(16, 64)

    def forward(self, input_ids, labels):
        logits = self.out(self.emb(input_ids))
        return {"loss": nn.functional.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1)), "logits": logits}


def lm_rows(n=24, length=8):
    """Token rows whose labels mask a varying number of positions (-100): the micro-batches of one
    optimizer step hold different numbers of tokens, so a sum, a mean and the last micro-batch differ."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 64, (length,), generator=g)
        labels = ids.clone()
        labels[:int(torch.randint(0, length - 2, (1,), generator=g))] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=16))


@pytest.mark.slow
@pytest.mark.parametrize("build", ["gpt2", "bert", "plain"])
def test_huggingface_loss_is_the_one_the_trainer_logs(tmp_path, build):
    """gradient_accumulation_steps=4, logging_steps=1: metrics.csv's loss of every step is the Trainer's
    logged loss for that step. GPT-2 and BERT get num_items_in_batch (the sum over micro-batches of
    the model's loss is the step's), the plain module does not (the mean is)."""
    from transformers import Trainer, TrainingArguments

    from vgrad_cli.integrations.huggingface import VgradCallback

    model, data = {"gpt2": (tiny_gpt2, lm_rows), "plain": (PlainLM, lm_rows),
                   "bert": (tiny_bert, lambda: [Rows()[i] for i in range(24)])}[build]
    model, data = model(), data()
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=2,
                             gradient_accumulation_steps=4, logging_steps=1, learning_rate=1e-3, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    handed = {}

    class Seen(VgradCallback):  # the loss an unlogged step hands Monitor (for the non-finite check)
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            handed[state.global_step] = float(self._loss())
            return super().on_pre_optimizer_step(args, state, control, **kwargs)

    vgrad = Seen(out=tmp_path, name=build, every=2, on_problem=None, plots=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[vgrad])
    with vgrad:
        trainer.train()
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert sorted(logged) == [1, 2, 3]
    # metrics.csv's step s is the optimizer step the Trainer logs as global_step s + 1; steps 0 and 2 are
    # measured (the loss summed over the backward passes the measurement waits for), step 1 is not
    recorded = {int(m["step"]): float(m["loss"]) for m in read_csv(vgrad.path / "metrics.csv")}
    assert sorted(recorded) == [0, 2] and sorted(handed) == [0, 1, 2]
    for step in handed:
        assert handed[step] == pytest.approx(logged[step + 1], rel=1e-4), (step, handed, logged)
        if step in recorded:
            assert recorded[step] == pytest.approx(logged[step + 1], rel=1e-4), (step, recorded, logged)
    per_item = build != "plain"
    assert trainer.model_accepts_loss_kwargs == per_item  # the two cases this test means to cover


# ---------------------------------------------------------------------------------------- Monitor
def test_monitor_with_a_closure_optimizer_and_evaluation_between_steps(tmp_path):
    """optimizer.step(closure) runs forward, backward and clipping inside step(): the update ratio and
    the norm after clipping still come from the right moments; a no_grad forward while a logged step
    is armed is not recorded."""
    from vgrad_cli import Monitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    seen = {}
    with Monitor(model, optimizer=opt, out=tmp_path, every=1, on_problem=None, plots=False) as mon:
        for step in range(2):
            with torch.no_grad():
                model(torch.zeros(3, 4))  # an evaluation pass between steps: another batch size, ignored

            def closure(step=step):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                mon.step(loss)
                seen[step] = {"pre": total(snapshot(model))}
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
                seen[step]["post"] = total(snapshot(model))
                seen[step]["before"] = [p.detach().clone() for p in model.parameters()]
                return loss

            opt.step(closure)
            upd = [(b - p.detach()).norm().item() ** 2 for b, p in zip(seen[step]["before"], model.parameters())]
            seen[step]["ratio0"] = math.sqrt(sum(upd[:2])) / math.sqrt(
                sum(b.norm().item() ** 2 for b in seen[step]["before"][:2]))
    metrics, rows = read_csv(mon.path / "metrics.csv"), read_csv(mon.path / "layers.csv")
    assert [int(m["step"]) for m in metrics] == [0, 1]
    for m in metrics:
        s = seen[int(m["step"])]
        assert float(m["grad_norm_total"]) == pytest.approx(s["pre"], rel=1e-5)
        assert float(m["grad_norm_clipped"]) == pytest.approx(s["post"], rel=1e-5)
        first = next(r for r in rows if r["step"] == m["step"] and r["layer"] == "0")
        assert float(first["update_ratio"]) == pytest.approx(s["ratio0"], rel=1e-4)
        assert float(first["act_unresponsive_frac"]) < 1  # the evaluation batch is all one input
