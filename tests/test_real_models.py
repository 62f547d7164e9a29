"""How the verdict reads models vgrad did not build (issue 19): every stack of a block view, a
torch.compile'd model without δ, the same verdict at every logging cadence, a partial fine-tune whose
frozen rows no indicator reads, and "not measurable" that says why. (The broad suite of library
models, healthy and broken, is another file's.)"""

import contextlib
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_monitor import ResCNN  # a residual CNN with functional ReLUs: two blocks in a Sequential
from vgrad_cli import Monitor
from vgrad_cli.analysis.diagnose import diagnose


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest, and steadiest on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def indicators(path) -> dict:
    d = diagnose(path, ablation=False, write=False)
    return d, {i["key"]: i for i in d["indicators"]}


def monitored(model, batch, loss_of, steps, lr, every=2, opt=None, **kw):
    """Train `model` on one fixed batch under a Monitor; (summary, stderr, run path)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (opt or torch.optim.SGD)(params, lr=lr)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with Monitor(model, optimizer=opt, every=every, plots=False, **kw) as mon:
            for _ in range(steps):
                loss = loss_of(model, batch)
                opt.zero_grad()
                loss.backward()
                mon.step(loss)
                opt.step()
    # the warning wraps to the terminal: its words, on one line
    return json.loads((mon.path / "summary.json").read_text()), " ".join(err.getvalue().split()), mon.path


def xy(seed, n=64, d=8, classes=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


# ----------------------------------------------------------------------------- every stack

class PreLN(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.Linear(2 * w, w)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class TwoStacks(nn.Module):
    """A Pre-LN residual encoder of 6 blocks (the main stack) and an MLP head of 5 (Linear, act)
    blocks: a second stack."""

    def __init__(self, act=nn.Sigmoid, w=16):
        super().__init__()
        self.inp = nn.Linear(8, w)
        self.encoder = nn.Sequential(*[PreLN(w) for _ in range(6)])
        self.head = nn.Sequential(*[nn.Sequential(nn.Linear(w, w), act()) for _ in range(5)])
        self.out = nn.Linear(w, 2)
        if act is nn.ReLU:
            for block in self.head:
                nn.init.kaiming_normal_(block[0].weight, nonlinearity="relu")

    def forward(self, x):
        return self.out(self.head(self.encoder(self.inp(x))))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_vanishing_second_stack_is_found_behind_a_healthy_main_stack(tmp_path, seed):
    """Only the main stack used to be read: this model read healthy. Measured over seeds 0-3: the
    sigmoid head's delta_norm head.0/head.4 2.6e-4-7.1e-4 (>= 14x under 0.01), the encoder's
    encoder.0/encoder.5 1.19-1.34."""
    torch.manual_seed(seed)
    summary, err, path = monitored(TwoStacks(), xy(seed), ce, 6, 0.05, out=tmp_path)
    assert summary["main_stack"] == "encoder" and summary["verdict"] == "vanishing", summary["verdict_reason"]
    # the summary's ratios stay the main stack's; the reason names the stack that vanished
    assert 0.5 < summary["delta_norm_ratio_first_step"] < 2
    assert summary["verdict_reason"].startswith("step 0: stack head: delta_norm head.0/head.4 ")
    assert "last block of stack head" in err and err.count("vgrad: ") == 1
    _, by = indicators(path)
    head = by["gradient_decay"]["evidence"]["first_step"]["stacks"]["head"]
    assert head["ratio"] < 1e-3 and head["column"] == "delta_norm"
    # weights_barely_moving reads the main stack's blocks: the first third of its 6
    assert by["weights_barely_moving"]["evidence"]["early_names"] == ["encoder.0", "encoder.1"]


def test_a_healthy_second_stack_stays_healthy(tmp_path):
    """A Kaiming ReLU head: its head.0/head.4 ratio 0.59-1.30 over seeds 0-3, no warning."""
    torch.manual_seed(0)
    summary, err, path = monitored(TwoStacks(nn.ReLU), xy(0), ce, 6, 0.05, out=tmp_path)
    assert summary["verdict"] == "healthy" and err == "", (summary["verdict_reason"], err)
    _, by = indicators(path)
    assert 0.1 < by["gradient_decay"]["evidence"]["first_step"]["stacks"]["head"]["ratio"] < 10


def test_an_exploding_second_stack_is_found_too(tmp_path):
    """The same head with its Kaiming weights x5 (a factor ~4 per block, backward): stack head's
    delta_norm head.0/head.4 377-799 over seeds 0-3 (>= 3.7x over 100), the encoder's 1.2-1.5."""
    torch.manual_seed(0)
    model = TwoStacks(nn.ReLU)
    with torch.no_grad():
        for block in model.head:
            block[0].weight.mul_(5)
    summary, err, _ = monitored(model, xy(0), ce, 2, 0.01, out=tmp_path)
    assert summary["verdict"] == "exploding" and summary["status"] == "completed"
    assert summary["verdict_reason"].startswith("stack head: head.0/head.4 delta_norm ")
    assert "exploding gradients at step 0" in err and "(last block of stack head)" in err
    assert summary["delta_norm_ratio_first_step"] < 10


# ----------------------------------------------------------------------------- without δ

def sigmoid_mlp(depth=12, width=32):
    layers = []
    for i in range(depth):
        layers += [nn.Linear(8 if i == 0 else width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 2))


@pytest.mark.slow
def test_a_compiled_sigmoid_mlp_reads_vanishing_from_its_gradient_norms(tmp_path):
    """Compiled, Monitor measures no δ: the verdict used to be "underfitting, the gradient reaches
    every layer". Measured over seeds 0-3: grad_norm layer 0/output 6e-12-5e-11 compiled, delta_norm
    1e-11-1e-10 plain."""
    readings = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.compile(sigmoid_mlp(), backend="aot_eager") if compiled else sigmoid_mlp()
        summary, err, path = monitored(model, xy(0), ce, 6, 0.05, out=tmp_path)
        assert summary["verdict"] == "vanishing", summary["verdict_reason"]
        readings[compiled] = (summary["verdict_reason"], err, indicators(path)[1])
    reason, err, by = readings[True]
    assert reason.startswith("δ was not measured (torch.compile'd model): read from grad_norm: step 0: "
                             "grad_norm layer 0/output ")
    assert "grad_norm of layer '0' (input side) / layer '24' (output)" in err
    assert by["gradient_decay"]["evidence"]["first_step"]["reading"]["ratio"] < 1e-6
    assert by["unresponsive_units"]["summary"].startswith("torch.compile'd model: activation statistics need hooks")
    plain, _, _ = readings[False]
    assert plain.startswith("step 0: delta_norm layer 0/output ") and "δ was not measured" not in plain


@pytest.mark.slow
def test_a_compiled_healthy_model_says_what_its_verdict_rests_on(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    summary, err, _ = monitored(torch.compile(model, backend="aot_eager"), xy(0), ce, 6, 0.05, out=tmp_path)
    assert summary["verdict"] == "healthy" and err == ""
    assert "δ was not measured (torch.compile'd model): read from grad_norm" in summary["verdict_reason"]
    assert "the gradient reaches every layer" not in summary["verdict_reason"]


# ----------------------------------------------------------------------------- one verdict whatever the cadence

def quadrants(seed=0):
    """64 8x8 images; the class says which of two quadrant means is positive: learnable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 1, 8, 8, generator=g)
    return x, (x[:, 0, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 0, :, :4].mean((1, 2)) > 0).long()


@pytest.mark.slow
@pytest.mark.parametrize("lr, steps, verdict", [
    (0.05, 101, "healthy"),       # the loss falls 98.7-99.8 % (seeds 0-3)
    (3e-5, 101, "underfitting"),  # it falls 0.5-2.2 %: >= 4.5x under the 10 % line
    (1e-3, 12, "healthy"),        # too short to judge: the old rule read underfitting at every=1 only
])
def test_the_same_training_gets_one_verdict_at_every_cadence(tmp_path, lr, steps, verdict):
    got = {}
    for every in (1, 5, 10):
        torch.manual_seed(0)
        opt = lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)  # noqa: E731
        summary, _, path = monitored(ResCNN(), quadrants(), ce, steps, lr, every=every, opt=opt, out=tmp_path)
        slow = indicators(path)[1]["slow_training"]
        got[every] = (summary["verdict"], slow["status"])
    assert set(got.values()) == {(verdict, {"healthy": "absent", "underfitting": "present"}[verdict]
                                  if steps > 100 else "not measurable")}, got


def _run_with_losses(losses, every, baseline_status="completed"):
    from pathlib import Path

    from vgrad_cli.rundir.store import Run

    return Run(Path("r"), {"status": baseline_status}, {}, [],
               [{"step": s, "loss": v} for s, v in enumerate(losses) if s % every == 0 or s == len(losses) - 1])


def test_loss_windows_are_stretches_of_steps_not_counts_of_points():
    """One loss curve read at every=1, 5 and 10: the same windows of the step span, the same reading,
    with and without a baseline; an 8-step run is too short at every cadence."""
    from vgrad_cli.analysis.indicators import poor_performance, slow_training

    curve = [1.4 * (0.985 ** s) for s in range(201)]   # falls 95 %: neither slow nor poor
    flat = [1.4 * (0.9996 ** s) for s in range(201)]   # falls 8 %: stalled
    for every in (1, 5, 10):
        assert slow_training(_run_with_losses(curve, every), 1.4)["status"] == "absent"
        assert poor_performance(_run_with_losses(curve, every), 1.4, None)["status"] == "absent"
        assert slow_training(_run_with_losses(flat, every), 1.4)["status"] == "present"
        assert slow_training(_run_with_losses(flat, every), None)["status"] == "present"  # 200 steps: judged
        window = slow_training(_run_with_losses(flat, every), 1.4)["evidence"]["end_window_steps"]
        assert window == [{1: 181, 5: 185, 10: 190}[every], 200]  # the last 10 % of the span: steps 181-200
        short = slow_training(_run_with_losses(flat[:9], every), 1.4)
        assert short["status"] == "not measurable" and "span 8 steps" in short["summary"]
    # no baseline: poor performance is not measurable, slow training needs 100 steps
    nb = poor_performance(_run_with_losses(curve, 1), None, None)
    assert nb["status"] == "not measurable" and nb["summary"].startswith("no task baseline")
    s = slow_training(_run_with_losses(flat[:60], 1), None)
    assert s["status"] == "not measurable" and "at least 100 steps" in s["summary"]


# ----------------------------------------------------------------------------- frozen rows, not measurable

def tiny_bert(frozen_layers=2):
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                                     intermediate_size=128, vocab_size=128,
                                                     max_position_embeddings=64, num_labels=2))
    model.bert.embeddings.requires_grad_(False)
    for layer in model.bert.encoder.layer[:frozen_layers]:
        layer.requires_grad_(False)
    return model


def tokens(seed=0, b=16, t=32):
    g = torch.Generator().manual_seed(1000 + seed)
    return {"input_ids": torch.randint(0, 128, (b, t), generator=g), "labels": torch.randint(0, 2, (b,), generator=g)}


def hf_loss(model, batch):
    return model(**batch).loss


@pytest.mark.slow
def test_a_partial_fine_tune_is_healthy_and_no_indicator_reads_its_frozen_rows(tmp_path):
    """BERT with its embedding and layers 0-1 frozen, AdamW lr 3e-4, 30 steps: over seeds 0-3 the loss
    falls 7-14 % and the δ ratio of layers 2/3 stays within 0.83-1.15; healthy, no warning. Frozen rows
    used to read as zeros ("vanishing at step 0"); a 30-step run without a task baseline is too short
    to call slow (it would be, at 7 %)."""
    torch.manual_seed(0)
    summary, err, path = monitored(tiny_bert(), tokens(), hf_loss, 30, 3e-4, every=5, opt=torch.optim.AdamW,
                                   out=tmp_path)
    assert summary["verdict"] == "healthy" and err == "", (summary["verdict_reason"], err)
    d, by = indicators(path)
    text = json.dumps(d["indicators"])
    for frozen in ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"):
        assert frozen not in text, frozen
    assert by["gradient_decay"]["evidence"]["first_step"]["delta"]["ratio"] is not None
    assert by["unresponsive_units"]["status"] == "absent"
    assert by["unresponsive_units"]["evidence"]["early_names"] == ["bert.encoder.layer.2.intermediate.dense"]
    assert by["weights_barely_moving"]["evidence"]["early_names"] == ["bert.encoder.layer.2"]
    assert by["poor_performance"]["summary"].startswith("no task baseline")
    assert "at least 100 steps" in by["slow_training"]["summary"]


class Encoder(nn.Module):
    """nn.TransformerEncoder: F.relu then dropout inside each layer, no activation module."""

    def __init__(self, d=32):
        super().__init__()
        self.emb = nn.Embedding(64, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.head = nn.Linear(d, 64)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)))


def lm_loss(model, ids):
    return F.cross_entropy(model(ids).reshape(-1, 64), ids.reshape(-1))


@pytest.mark.parametrize("activations", [True, False])
def test_not_measurable_says_the_true_reason_on_a_transformer(tmp_path, activations):
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    summary, err, path = monitored(Encoder(), ids, lm_loss, 4, 1e-3, opt=torch.optim.Adam, out=tmp_path,
                                   activations=activations)
    assert summary["verdict"] == "healthy" and err == ""
    _, by = indicators(path)
    for key in ("unresponsive_units", "dying_relu"):
        assert by[key]["status"] == "not measurable"
        assert by[key]["summary"].startswith("vgrad found no activation after any module of this model" if activations
                                             else "activation statistics are off"), by[key]["summary"]
    assert "log.activations off?" not in json.dumps(list(by.values()))
    assert by["slow_training"]["summary"] == "the logged losses span 2 steps (0-2): fewer than 10, too few to judge"
    assert by["gradient_decay"]["status"] == "absent"  # the blocks carry δ: this one is measured
