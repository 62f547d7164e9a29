"""What Monitor reads off a real model and its training (config.yaml's model.structure and
train.detected), and the advice `vgrad diagnose` gives a Monitor run from it: only the changes that
apply to the model, with the facts they rest on. Library models are built from configs (no
downloads): GPT-2, Llama, BERT, ViT, ResNet from `transformers`, torch's nn.TransformerEncoder, LoRA
from `peft`.

Outcome runs, measured on seeds 0-3 (VGRAD_TEST_SEED picks one; CPU, 1 thread):
- 24-layer Post-LN encoder, Adam lr 1e-2, no warm-up: first/last block delta ratio at the last
  logged step 3.8e-18 .. 7.7e-11 (threshold 1e-2: > 8 decades of margin); with a 3-step warm-up
  from 0.1x: 3.3e-14 .. 1.5e-11 (> 9 decades).
- BERT with a 10-deep sigmoid head: 1.3e-8 .. 2.9e-8 over the head's blocks (> 5 decades).
- GPT-2, 12 blocks, initializer_range=1.0: block ratio at step 0 1.37e3 .. 4.66e3 (threshold 1e2:
  13x at least); the blocks' weight gain std·sqrt(fan_in) is 7.9 (threshold 2: it is the init's
  std 1.0 times sqrt(64), whatever the seed).
- healthy GPT-2 (4 blocks, AdamW 1e-3, 10 steps): block ratio 1.15 .. 1.76 (1.75 decades inside).
- a 21-layer GELU MLP at torch's default init (weight gain 0.58): layer-0/output ratio 1.0e-12 ..
  9.2e-12 at step 0 (> 9 decades); a 3-layer ReLU MLP at SGD lr 50: grad_norm_total grows 2.9e6 ..
  5.1e16 x its step-0 value (threshold 1e3: > 3 decades), while its step-0 ratio is 0.05 .. 0.07.
"""

import re

import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT, TEST_SEED
from vgrad_cli import Monitor
from vgrad_cli.analysis.advice import recommend
from vgrad_cli.analysis.diagnose import diagnose
from vgrad_cli.monitor.describe import lr_schedule

VOCAB, BATCH, SEQ = 128, 8, 32
STRUCTURAL = ("ReLU", "Kaiming", "normalization", "residual", "activation")


def tokens(seed: int, batch=BATCH, labels=None) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    out = {"input_ids": ids}
    if labels == "lm":
        out["labels"] = ids
    elif labels == "cls":
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    return out


def gpt2(n_layer=4, init=0.02):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128,
                                      initializer_range=init))


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                        num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=128))


def bert(frozen=0):
    from transformers import BertConfig, BertForSequenceClassification

    m = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                                 intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=128,
                                                 num_labels=2))
    if frozen:  # a partial fine-tune: the embeddings and the first blocks stay
        m.bert.embeddings.requires_grad_(False)
        for layer in m.bert.encoder.layer[:frozen]:
            layer.requires_grad_(False)
    return m


def sigmoid_head():
    m = bert()
    m.classifier = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.Sigmoid()) for _ in range(10)], nn.Linear(64, 2))
    return m


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                               intermediate_size=128, image_size=32, patch_size=8, num_labels=10))


def resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[2, 2],
                                                     layer_type="bottleneck", num_labels=10))


def lora_gpt2():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                                             lora_dropout=0.0))


class Encoder(nn.Module):
    """Token tagging with torch's nn.TransformerEncoder (ReLU, functional: F.relu)."""

    def __init__(self, n_layer=4, norm_first=True, d=64):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, n_layer, norm=nn.LayerNorm(d) if norm_first else None,
                                         enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, input_ids, labels):
        logits = self.head(self.enc(self.emb(input_ids)))
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))


def images(seed: int) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    return {"pixel_values": torch.randn(16, 3, 32, 32, generator=g), "labels": torch.randint(0, 10, (16,), generator=g)}


def train(tmp_path, model, batch, steps=2, lr=1e-3, opt=torch.optim.AdamW, every=1, warmup=None, seed=TEST_SEED):
    """A plain loop under Monitor; returns (config.yaml, the run's path)."""
    torch.set_num_threads(1)
    optimizer = opt([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=warmup[0], total_iters=warmup[1]) if warmup else None
    with Monitor(model, optimizer=optimizer, out=tmp_path, every=every, plots=False, on_problem=None) as mon:
        for _ in range(steps):
            out = model(**batch)
            loss = out if isinstance(out, torch.Tensor) else out.loss
            optimizer.zero_grad()
            loss.backward()
            mon.step(loss)
            optimizer.step()
            if schedule is not None:
                schedule.step()
    return yaml.safe_load((mon.path / "config.yaml").read_text()), mon.path


def advice(path) -> tuple[str, list[dict]]:
    d = diagnose(path, ablation=False, write=False)
    return d["verdict"], d["recommendations"]


def titles(recs) -> list[str]:
    return [r["title"] for r in recs]


# --------------------------------------------------------------------------- the structure detected
CASES = {  # model, batch, the main stack's facts: norms, position, activations
    "gpt2": (gpt2, lambda: tokens(0, labels="lm"), "transformer.h", ["layernorm"], "pre", ["gelu"]),
    "llama": (llama, lambda: tokens(0, labels="lm"), "model.layers", ["rmsnorm"], "pre", ["silu"]),
    "bert": (bert, lambda: tokens(0, 16, labels="cls"), "bert.encoder.layer", ["layernorm"], "post", ["gelu"]),
    "vit": (vit, lambda: images(0), "vit.layers", ["layernorm"], "pre", ["gelu"]),
    "encoder_pre": (lambda: Encoder(norm_first=True), lambda: tokens(0, labels="lm"), "enc.layers", ["layernorm"], "pre",
                    ["relu"]),
    "encoder_post": (lambda: Encoder(norm_first=False), lambda: tokens(0, labels="lm"), "enc.layers", ["layernorm"],
                     "post", ["relu"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_structure_of_library_transformers(tmp_path, case):
    """Norm kind and placement from the forward order (not the class names), residual adds from the
    autograd graph, activations by module class or, for F.relu, by its autograd node."""
    build, batch, stack, norms, position, acts = CASES[case]
    torch.manual_seed(0)
    cfg, _ = train(tmp_path, build(), batch(), steps=1)
    s = cfg["model"]["structure"]
    main = next(x for x in s["stacks"] if x["name"] == cfg["model"]["main_stack"])
    assert main["name"] == stack and main["blocks"] == 4
    assert (main["norms"], main["norm_position"], main["activations"]) == (norms, position, acts)
    assert main["residual"] is True and main["residual_evidence"].startswith("autograd graph: 4 of 4")
    assert 0.1 < main["weight_gain"] < 0.7  # std 0.02 (HF) ~ 0.16 at width 64; torch's default init 0.58
    assert "frozen" not in s and "adapters" not in s


def test_structure_of_a_resnet(tmp_path):
    """BatchNorm inside the residual branch (neither Pre- nor Post-LN); a block with a projection
    shortcut (a new stage) adds no identity: 2 of the 4 blocks do."""
    torch.manual_seed(0)
    cfg, _ = train(tmp_path, resnet(), images(0), steps=1)
    main = cfg["model"]["structure"]["stacks"][0]
    assert (main["norms"], main["norm_position"], main["activations"]) == (["batchnorm"], "inside", ["relu"])
    assert main["residual"] is True and main["residual_evidence"].startswith("autograd graph: 2 of 4")
    assert main["weight_gain"] == pytest.approx(2 ** 0.5, rel=0.05)  # HF's ResNet: Kaiming for ReLU


def test_structure_of_a_partial_fine_tune_and_lora(tmp_path):
    torch.manual_seed(0)
    cfg, _ = train(tmp_path / "partial", bert(frozen=2), tokens(0, 16, labels="cls"), steps=1)
    s = cfg["model"]["structure"]
    assert s["frozen"] == ["embedding", "bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert s["stacks"][0]["frozen_blocks"] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert s["stacks"][0]["norm_position"] == "post" and s["stacks"][0]["residual"] is True

    torch.manual_seed(0)
    cfg, _ = train(tmp_path / "lora", lora_gpt2(), tokens(0, labels="lm"), steps=1)
    s = cfg["model"]["structure"]
    assert s["adapters"]["kind"] == "lora" and s["adapters"]["modules"] == 4
    assert s["adapters"]["examples"][0].endswith("transformer.h.0.attn.c_attn")
    assert len(s["stacks"][0]["partly_frozen_blocks"]) == 4 and s["frozen"] == ["embedding"]
    assert s["stacks"][0]["norm_position"] == "pre"


def test_structure_of_a_plain_chain(tmp_path):
    """No blocks: an MLP whose layers feed each other has no residual add (each layer's input is the
    previous one's output); the activation modules are named."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, y):
            return nn.functional.cross_entropy(self.net(x), y)

    cfg, _ = train(tmp_path, Wrap(), {"x": x, "y": y}, steps=1)
    s = cfg["model"]["structure"]
    assert s["norms"] == [] and s["activations"] == ["tanh"] and "stacks" not in s
    assert s["residual"] is False and "previous layer's output" in s["residual_evidence"]


# --------------------------------------------------------------------------- the training detected
def fit(tmp_path, model, opt, x, y, every: int, clip=None, schedule=None, steps=6):
    """A classifier's loop under Monitor that may clip (without telling it) and step a schedule."""
    with Monitor(model, optimizer=opt, out=tmp_path, every=every, plots=False, on_problem=None) as mon:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if schedule is not None:
                schedule.step()
    return mon.path


def test_training_facts_lr_warmup_and_clipping(tmp_path):
    """The optimizer's settings, a warm-up read off the lr of the logged steps, and clipping seen
    in the norms (the loop clips without telling Monitor)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    path = fit(tmp_path, model, opt, torch.randn(32, 8), torch.randint(0, 2, (32,)), every=1,
               clip=1e-3, schedule=warm)  # a clip far below the norm: active on every step
    t = yaml.safe_load((path / "config.yaml").read_text())["train"]
    assert (t["optimizer"], t["momentum"], t["weight_decay"]) == ("SGD", 0.9, 1e-4)
    d = t["detected"]
    assert d["lr_schedule"] == "warm-up" and d["warmup_until"] == 3
    assert d["lr_first"] == pytest.approx(0.01) and d["lr_max"] == pytest.approx(0.1)
    assert (d["clipping"], d["clipped_steps"]) == ("seen", "6/6")


def test_lr_schedule_reads_the_logged_learning_rates():
    assert lr_schedule([(0, 1e-3), (5, 1e-3)])["lr_schedule"] == "constant"
    assert lr_schedule([(0, 0.0), (5, 5e-4), (10, 1e-3), (15, 1e-3)]) == {
        "lr_schedule": "warm-up", "lr_first": 0.0, "lr_max": 1e-3, "lr_last": 1e-3, "warmup_until": 10}
    assert lr_schedule([(0, 1e-4), (5, 1e-3), (10, 5e-4)])["lr_schedule"] == "warm-up, then decay"
    assert lr_schedule([(0, 1e-3), (5, 5e-4), (10, 1e-4)])["lr_schedule"] == "decay"
    assert lr_schedule([(0, 1e-3), (5, 1e-4), (10, 1e-3)])["lr_schedule"] == "varying"
    assert lr_schedule([(0, None)]) == {"lr_schedule": "unknown"}


# --------------------------------------------------------------------------- advice that fits
@pytest.fixture(scope="module")
def postln(tmp_path_factory):
    """The 24-layer Post-LN encoder at Adam lr 1e-2 without warm-up: collapses (reads vanishing)."""
    torch.manual_seed(TEST_SEED)
    return train(tmp_path_factory.mktemp("postln"), Encoder(n_layer=24, norm_first=False), tokens(TEST_SEED, labels="lm"),
                 steps=10, lr=1e-2, opt=torch.optim.Adam, every=2)


@pytest.mark.slow
def test_postln_collapse_is_advised_warmup_preln_and_a_lower_lr(postln):
    cfg, path = postln
    assert cfg["train"]["detected"]["lr_schedule"] == "constant"
    verdict, recs = advice(path)
    assert verdict == "vanishing"
    assert titles(recs) == ["learning-rate warm-up", "Pre-LN", "a lower learning rate"]
    text = " ".join(t + " " + r["why"] for t, r in zip(titles(recs), recs))
    assert not any(word in text for word in ("Kaiming", "ReLU", "add normalization", "residual connections"))
    assert "is Post-LN" in recs[0]["why"] and "lr 0.01" in recs[0]["why"] and "no warm-up" in recs[0]["why"]
    assert "norm_first=True" in recs[1]["why"] and "e.g. 0.001" in recs[2]["why"]
    assert all(r["command"] is None for r in recs)


@pytest.mark.slow
def test_postln_with_warmup_is_not_told_to_add_warmup(tmp_path):
    torch.manual_seed(TEST_SEED)
    cfg, path = train(tmp_path, Encoder(n_layer=24, norm_first=False), tokens(TEST_SEED, labels="lm"), steps=10, lr=1e-2,
                      opt=torch.optim.Adam, every=2, warmup=(0.1, 3))
    assert cfg["train"]["detected"]["lr_schedule"] == "warm-up"
    verdict, recs = advice(path)
    assert verdict == "vanishing"  # a 3-step warm-up is too short: it still collapses
    assert titles(recs) == ["Pre-LN", "a lower learning rate"]
    assert "after warm-up" in recs[1]["why"]


@pytest.mark.slow
def test_preln_and_a_frozen_base_are_not_told_pre_ln(postln):
    """The rules on the real run's config, changed as another model would have it: a Pre-LN stack
    is not told Pre-LN; a pretrained base (LoRA adapters) keeps its architecture."""
    cfg, _ = postln
    by_key = diagnose(postln[1], ablation=False, write=False)["indicators"]
    by_key = {i["key"]: i for i in by_key}
    pre = yaml.safe_load(yaml.safe_dump(cfg))
    pre["model"]["structure"]["stacks"][0]["norm_position"] = "pre"
    assert titles(recommend(pre, "vanishing", by_key, False)) == ["a lower learning rate", "learning-rate warm-up"]
    lora = yaml.safe_load(yaml.safe_dump(cfg))
    lora["model"]["structure"]["adapters"] = {"kind": "lora", "modules": 24, "examples": []}
    lora["model"]["structure"]["stacks"][0]["partly_frozen_blocks"] = [f"enc.layers.{i}" for i in range(24)]
    recs = recommend(lora, "vanishing", by_key, False)
    assert titles(recs) == ["learning-rate warm-up", "a lower learning rate"]
    assert "architecture changes left out" in recs[0]["why"]
    assert "(24 partly frozen blocks; LoRA adapters on 24 modules)" in recs[0]["why"]


def test_deep_sigmoid_head_is_advised_relu_norm_residual_for_that_stack(tmp_path):
    torch.manual_seed(TEST_SEED)
    cfg, path = train(tmp_path, sigmoid_head(), tokens(TEST_SEED, 16, labels="cls"), steps=4, every=2)
    verdict, recs = advice(path)
    assert verdict == "vanishing" and cfg["model"]["main_stack"] == "classifier"
    assert titles(recs) == ["a ReLU-family activation with Kaiming init in classifier", "normalization in classifier",
                            "residual connections in classifier"]
    head = next(x for x in cfg["model"]["structure"]["stacks"] if x["name"] == "classifier")
    assert head["activations"] == ["sigmoid"]  # not the pooler's tanh before it
    assert "applies sigmoid after" in recs[0]["why"] and "0 of 10 blocks add their input" in recs[2]["why"]
    assert not any("warm-up" in t or "Pre-LN" in t for t in titles(recs))


def test_a_frozen_encoder_does_not_stop_advice_for_the_trainable_head(tmp_path):
    """Frozen parts are never advised a change, but a trainable stack beside them is."""
    torch.manual_seed(TEST_SEED)
    model = sigmoid_head()
    model.bert.requires_grad_(False)
    cfg, path = train(tmp_path, model, tokens(TEST_SEED, 16, labels="cls"), steps=4, every=2)
    assert cfg["model"]["structure"]["stacks"][0]["frozen_blocks"] == [f"bert.encoder.layer.{i}" for i in range(4)]
    verdict, recs = advice(path)
    assert verdict == "vanishing"
    assert titles(recs)[0] == "a ReLU-family activation with Kaiming init in classifier"
    assert not any("left out" in r["why"] for r in recs)


def test_gpt2_with_large_init_is_advised_a_smaller_init_and_clipping(tmp_path):
    torch.manual_seed(TEST_SEED)
    cfg, path = train(tmp_path, gpt2(n_layer=12, init=1.0), tokens(TEST_SEED, labels="lm"), steps=3, every=2)
    assert cfg["model"]["structure"]["stacks"][0]["weight_gain"] == pytest.approx(8, rel=0.05)  # std 1 x sqrt(64)
    verdict, recs = advice(path)
    assert verdict == "exploding"
    assert titles(recs) == ["a smaller init scale", "gradient clipping"]
    assert "std 7.9/sqrt(fan_in)" in recs[0]["why"] and "std ~0.02" in recs[0]["why"]
    assert not any(w in t for t in titles(recs) for w in STRUCTURAL)
    # a loop that already clips is not told to clip
    cfg["train"]["clip_norm"] = 1.0
    by_key = {i["key"]: i for i in diagnose(path, ablation=False, write=False)["indicators"]}
    assert titles(recommend(cfg, "exploding", by_key, False)) == ["a smaller init scale"]


def test_a_healthy_model_gets_no_remedies(tmp_path):
    torch.manual_seed(TEST_SEED)
    _, path = train(tmp_path, gpt2(), tokens(TEST_SEED, labels="lm"), steps=10, every=2)
    verdict, recs = advice(path)
    assert verdict == "healthy" and recs == []


def mlp_run(tmp_path, act, depth: int, lr: float, seed=TEST_SEED):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    layers = [nn.Linear(16, 32), act()]
    for _ in range(depth):
        layers += [nn.Linear(32, 32), act()]
    model = nn.Sequential(*layers, nn.Linear(32, 2))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 2, (64,), generator=g)
    return advice(fit(tmp_path, model, torch.optim.SGD(model.parameters(), lr=lr), x, y, every=2))


def test_a_deep_mlp_at_default_init_is_advised_kaiming(tmp_path):
    """A plain chain (no blocks, no norm, no residual add) of GELU layers at torch's default init:
    weight gain 0.58, below the ReLU family's critical 1.41."""
    verdict, recs = mlp_run(tmp_path, nn.GELU, depth=20, lr=0.01)
    assert verdict == "vanishing"
    assert titles(recs) == ["Kaiming init in the model", "normalization in the model", "residual connections in the model"]
    assert re.search(r"std 0\.5[78]/sqrt\(fan_in\)", recs[0]["why"]) and "uses gelu" in recs[0]["why"]  # 1/sqrt(3)


def test_a_gradient_that_grows_in_training_is_advised_lr_warmup_clipping(tmp_path):
    verdict, recs = mlp_run(tmp_path, nn.ReLU, depth=2, lr=50.0)
    assert verdict == "exploding"
    assert titles(recs) == ["a lower learning rate", "learning-rate warm-up", "gradient clipping"]
    assert "SGD at lr 50" in recs[0]["why"] and "e.g. 5," in recs[0]["why"]
    assert "no warm-up" in recs[1]["why"] and "none of 3 logged steps" in recs[2]["why"]


def test_run_format_documents_the_detected_keys(tmp_path):
    torch.manual_seed(0)
    cfg, _ = train(tmp_path, lora_gpt2(), tokens(0, labels="lm"), steps=1)
    s, d = cfg["model"]["structure"], cfg["train"]["detected"]
    keys = set(s) | set(s["stacks"][0]) | set(s["adapters"]) | set(d) | {"warmup_until", "residual_evidence"}
    text = (ROOT / "docs" / "run-format.md").read_text()
    assert not [k for k in sorted(keys) if f"`{k}`" not in text]


def test_a_model_that_cannot_be_read_keeps_training_and_gets_the_general_advice():
    from vgrad_cli.measure.structure import detect

    broken = detect(nn.Linear(2, 2), [], None, rec=None, feeds=None)  # no recorder: nothing can be read
    assert broken["error"].startswith("not detected: AttributeError")
    cfg = {"model": {"kind": "custom", "structure": broken}, "train": {"optimizer": "Adam", "lr": 1e-3}}
    recs = recommend(cfg, "vanishing", {}, False)
    assert recs and recs[0]["title"] == "a non-saturating activation with Kaiming init"  # advice.OWN_MODEL's
