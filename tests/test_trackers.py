"""Trackers with the real libraries: what Monitor(log_to=...), the framework callbacks and `vgrad
export` send is read back with each tracker's own reader (TensorBoard's event files through tbparse,
the offline W&B run's .wandb file through wandb's protobuf records, an MLflow store through
MlflowClient) and compared with layers.csv."""

import glob
import math
import struct
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from test_monitor import train as fit  # the plain loop: forward, backward, mon.step, update
from vgrad_cli.rundir.files import read_table

SENT = ("grad_norm", "grad_max_abs", "delta_norm", "weight_norm", "weight_drift", "update_ratio", "act_std")


def train(tmp_path, steps=11, every=5, depth=3, act=nn.Tanh, **options):
    """A small MLP under Monitor: logged steps 0, 5, 10 (every=5, 11 steps)."""
    from vgrad_cli import Monitor

    torch.manual_seed(0)
    hidden = [m for i in range(depth) for m in (nn.Linear(8 if i == 0 else 16, 16), act())]
    model = nn.Sequential(*hidden, nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with Monitor(model, optimizer=opt, out=tmp_path / "runs", every=every, plots=False, **options) as mon:
        fit(model, mon, steps, opt=opt, x=x, y=y)
    return mon.path


def expected(run_dir, modules: bool = False) -> dict:
    """{(tag, step): value} that a tracker must hold: every finite sent column of the run's view
    (blocks.csv when the model has repeated blocks, else layers.csv), or of layers.csv (modules)."""
    out = {}
    table = "blocks.csv" if (run_dir / "blocks.csv").exists() and not modules else "layers.csv"
    for r in read_table(run_dir, table):
        for col in SENT:
            if r.get(col) is not None and math.isfinite(r[col]):
                out[(f"vgrad/{col}/{r['name']}", r["step"])] = r[col]
    for m in read_table(run_dir, "metrics.csv"):
        if m.get("loss") is not None:
            out[("vgrad/loss", m["step"])] = m["loss"]
    return out


def assert_holds(got: dict, run_dir, rel=1e-6, modules: bool = False):
    want = expected(run_dir, modules)
    missing = [k for k in want if k not in got]
    assert not missing, missing[:5]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel), key
    steps = sorted({r["step"] for r in read_table(run_dir, "layers.csv")})
    assert sorted({s for _, s in got}) == steps  # nothing on steps that were not logged


# ---------------------------------------------------------------------------------------- readers
def tensorboard_scalars(log_dir) -> tuple[dict, dict]:
    from tbparse import SummaryReader

    reader = SummaryReader(str(log_dir))
    scalars = {(r.tag, int(r.step)): float(r.value) for r in reader.scalars.itertuples()}
    texts = {(r.tag, int(r.step)): r.value for r in reader.text.itertuples()}
    return scalars, texts


def wandb_records(run_root) -> tuple[list[dict], dict]:
    """An offline W&B run read back from its .wandb file (a LevelDB-style log of wandb's protobuf
    Records): the history rows as {key: value} and the last summary."""
    import json

    import wandb
    from wandb.proto import wandb_internal_pb2 as pb

    wandb.teardown()  # finish() can return before wandb-core's writer has flushed the file; teardown waits for it
    (path,) = glob.glob(f"{run_root}/wandb/offline-run-*/run-*.wandb")
    data = open(path, "rb").read()
    block, pos, chunks, records = 32768, 7, b"", []  # 7: the ":W&B" header, magic and version
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(chunks)
            records.append(rec)
            chunks = b""
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    return history, summary


# ---------------------------------------------------------------------------------------- tests
def test_scalars_are_named_by_column_and_row():
    from vgrad_cli.trackers.tracking import scalars

    rows = [{"step": 5, "layer": 0, "name": "enc.0", "grad_norm": 0.5, "delta_norm": None, "act_std": float("nan")},
            {"step": 5, "layer": 1, "name": "my head!", "grad_norm": 2.0}]
    out = scalars({"step": 5, "loss": 1.25, "time_s": 3.0, "eval_loss": None}, rows)
    assert out == {"vgrad/grad_norm/enc.0": 0.5, "vgrad/grad_norm/my head_": 2.0, "vgrad/loss": 1.25}


def test_log_to_rejects_what_it_cannot_send_to(tmp_path):
    from vgrad_cli import Monitor

    with pytest.raises(ValueError, match="log_to: cannot send to int"):
        Monitor(nn.Linear(2, 2), out=tmp_path, log_to=3)
    with pytest.raises(ValueError, match=r"wandb.init"):
        Monitor(nn.Linear(2, 2), out=tmp_path, log_to="wandb")  # no active W&B run
    statuses = [read_summary_status(d) for d in (tmp_path).iterdir()]
    assert statuses == ["failed", "failed"]  # the run directories say why, none is left "running"


def read_summary_status(d):
    import json

    return json.loads((d / "summary.json").read_text())["status"]


@pytest.mark.slow
def test_tensorboard_live_and_export_hold_layers_csv(tmp_path, cli):
    """A deep sigmoid net vanishes: the warning goes out as text on its step, the verdict at the end;
    `vgrad export` of the same run writes the same tags, steps and values as the live writer."""
    path = train(tmp_path, depth=8, act=nn.Sigmoid, log_to=[tmp_path / "tb", "tensorboard"], on_problem="warn")
    live, texts = tensorboard_scalars(tmp_path / "tb")
    assert_holds(live, path)
    assert texts[("vgrad/verdict", 10)].startswith("vanishing")
    assert "vanishing gradients at step 0" in texts[("vgrad/warnings", 0)]
    assert tensorboard_scalars(path / "tensorboard")[0] == live  # log_to="tensorboard": in the run directory
    res = cli("export", path, "--to", "tensorboard", tmp_path / "export")
    assert res.exit_code == 0, res.output
    exported, exported_texts = tensorboard_scalars(tmp_path / "export" / path.name)
    assert exported == live and exported_texts == texts


@pytest.mark.slow
def test_log_modules_sends_the_module_rows(tmp_path):
    """A transformer: by default the run's view (its blocks, where the model's repeated blocks are
    recognised), with log_modules=True every module of layers.csv."""
    from vgrad_cli import Monitor

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(4, 16), nn.TransformerEncoder(layer, 3, enable_nested_tensor=False), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 5, 4)
    paths = {}
    for modules in (False, True):
        with Monitor(model, optimizer=opt, out=tmp_path / "runs", every=2, plots=False, on_problem=None,
                     log_to=tmp_path / f"tb{modules}", log_modules=modules) as mon:
            for _ in range(3):
                loss = model(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                mon.step(loss)
                opt.step()
        paths[modules] = mon.path
        assert_holds(tensorboard_scalars(tmp_path / f"tb{modules}")[0], mon.path, modules=modules)
    got = {tag.split("/")[2] for tag, _ in tensorboard_scalars(tmp_path / "tbTrue")[0] if tag.startswith("vgrad/grad_norm/")}
    assert "1.layers.0.linear1" in got  # a module inside a block


@pytest.mark.slow
def test_wandb_offline_run_holds_the_keys(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="t", dir=str(tmp_path))
    for i in range(3):
        wandb.log({"user_metric": i})  # the user's own logging keeps its own step
    path = train(tmp_path, log_to="wandb", on_problem=None)
    wandb.log({"user_metric": 9})
    run.finish()
    history, summary = wandb_records(tmp_path)
    got = {(k, h["vgrad/step"]): v for h in history if "vgrad/step" in h for k, v in h.items() if k.startswith("vgrad/")
           and k != "vgrad/step"}
    assert_holds(got, path)
    assert [h["user_metric"] for h in history if "user_metric" in h] == [0, 1, 2, 9]
    assert summary["vgrad/verdict"].startswith("healthy")


@pytest.mark.slow
def test_mlflow_file_store_holds_the_metric_history(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as active:
        path = train(tmp_path, log_to="mlflow", on_problem=None)
    client = MlflowClient(uri)
    want = expected(path)
    got = {(key, m.step): m.value for key in {k for k, _ in want} for m in client.get_metric_history(active.info.run_id, key)}
    assert_holds(got, path)
    verdict = client.download_artifacts(active.info.run_id, "vgrad/verdict.txt", str(tmp_path))
    assert open(verdict).read().startswith("healthy")


@pytest.mark.slow
def test_export_of_a_vgrad_run_to_mlflow_and_wandb(tmp_path, cli, write_config, monkeypatch):
    from conftest import only_run_dir, small
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert cli("run", write_config(small()), "--out", tmp_path / "runs", "--quiet", "--no-plots").exit_code == 0
    path = only_run_dir(tmp_path / "runs")
    res = cli("export", path, "--to", "mlflow", tmp_path / "store")
    assert res.exit_code == 0, res.output
    client = MlflowClient((tmp_path / "store").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("vgrad").experiment_id])
    assert found.info.run_name == path.name and found.info.status == "FINISHED"
    got = {(k, m.step): m.value for k in {k for k, _ in expected(path)} for m in client.get_metric_history(found.info.run_id, k)}
    assert_holds(got, path)
    res = cli("export", path, "--to", "wandb", tmp_path / "wb")
    assert res.exit_code == 0, res.output
    history, summary = wandb_records(tmp_path / "wb")
    got = {(k, h["vgrad/step"]): v for h in history for k, v in h.items() if k.startswith("vgrad/") and k != "vgrad/step"}
    assert_holds(got, path)
    verdict = __import__("json").loads((path / "summary.json").read_text())["verdict"]
    assert summary["vgrad/verdict"].startswith(verdict) and found.data.tags["vgrad.status"] == "completed"


def test_export_says_what_is_wrong(tmp_path, cli):
    res = cli("export", tmp_path, "--to", "neptune", tmp_path / "x")
    assert res.exit_code == 2 and "--to must be one of tensorboard, wandb, mlflow, not 'neptune'" in res.output
    res = cli("export", "no-such-run", "--to", "tensorboard", tmp_path / "x", "--runs-dir", tmp_path)
    assert res.exit_code == 2 and "no run 'no-such-run'" in res.output
    assert not (tmp_path / "x").exists()


def test_importing_vgrad_imports_no_tracker():
    code = ("import sys, vgrad_cli, vgrad_cli.cli.main, vgrad_cli.monitor.monitor, vgrad_cli.trackers.tracking; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'wandb', 'mlflow', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------- frameworks
@pytest.mark.slow
def test_lightning_callback_reaches_the_trainers_csv_logger(tmp_path):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from vgrad_cli.integrations.lightning import VgradCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)  # the user's own figure, beside vgrad's in the same file
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(48, 8), torch.randn(48, 1)), batch_size=8)
    logger = CSVLogger(tmp_path / "logs", name="pl")
    vgrad = VgradCallback(out=tmp_path / "runs", every=2, on_problem=None, plots=False, log_to="trainer")
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[vgrad])
    trainer.fit(Net(), data)
    with open(f"{logger.log_dir}/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = {(k, int(r["step"])): float(v) for r in rows for k, v in r.items() if k.startswith("vgrad/") and v != ""}
    assert_holds(got, vgrad.path)
    assert any(r.get("train_loss") for r in rows)


@pytest.mark.slow
def test_huggingface_callback_reaches_log_history_and_tensorboard(tmp_path):
    from transformers import Trainer, TrainingArguments

    from test_integrations import Rows, tiny_bert
    from vgrad_cli.integrations.huggingface import VgradCallback

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=5, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=["tensorboard"], use_cpu=True, save_strategy="no",
                             logging_steps=2, disable_tqdm=True, dataloader_num_workers=0)
    vgrad = VgradCallback(out=tmp_path / "runs", every=2, on_problem=None, plots=False, log_to="trainer")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Rows(), callbacks=[vgrad])
    with vgrad:
        trainer.train()
    history = trainer.state.log_history
    got = {(k, h["step"]): v for h in history if any(k.startswith("vgrad/grad") for k in h)
           for k, v in h.items() if k.startswith("vgrad/") and isinstance(v, float)}
    assert_holds(got, vgrad.path)
    assert any("loss" in h for h in history)  # the Trainer's own logs are still there
    (tb,) = (tmp_path / "hf" / "runs").glob("vgrad-*")
    assert_holds(tensorboard_scalars(tb)[0], vgrad.path)
