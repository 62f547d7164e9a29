"""Sequence tasks for recurrent models and transformers (model.kind rnn, lstm, gru, transformer).

Inputs are (batch, time, features). Targets sit on the last `output_steps` time steps: one for
adding and temporal_order, `copy_len` for copy. Baselines are in docs/tasks.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import TaskBase, classification, regression


class SequenceTask(TaskBase):
    model_kinds: ClassVar[tuple[str, ...]] = ("rnn", "lstm", "gru", "transformer")
    train_size: int = Field(4096, ge=1, description="sequences in the fixed training set")
    eval_size: int = Field(512, ge=1, description="sequences in the fixed held-out evaluation set")


class Adding(SequenceTask):
    """The adding problem (Hochreiter & Schmidhuber 1997): (value, marker) pairs, two positions marked,
    one in each half; the target is the sum of the two marked values. Predicting 1.0 scores ~0.167."""

    name: Literal["adding"] = "adding"
    seq_len: int = Field(50, ge=2, description="time steps per sequence")

    def generate(self, n, g):
        import torch

        t = self.seq_len
        values = torch.rand(n, t, generator=g)
        half = t // 2
        first = torch.randint(0, half, (n,), generator=g)
        second = torch.randint(half, t, (n,), generator=g)
        markers = torch.zeros(n, t)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        y = (values[rows, first] + values[rows, second]).unsqueeze(1)
        return torch.stack([values, markers], 2), y

    def finish(self, xt, yt, xe, ye):
        return regression(xt, yt, xe, ye)


class Copy(SequenceTask):
    """The copy (memory) task (Arjovsky, Shah & Bengio 2016): `copy_len` symbols, `delay` blanks, a recall
    marker, then the model must output the symbols. Sequence length 2*copy_len + delay.
    Baseline: ln(n_symbols) per recalled symbol (guessing)."""

    name: Literal["copy"] = "copy"
    n_symbols: int = Field(8, ge=2, description="alphabet size")
    copy_len: int = Field(5, ge=1, description="symbols to remember")
    delay: int = Field(20, ge=1, description="blank steps between the symbols and the recall marker")

    @property
    def seq_len(self) -> int:
        return 2 * self.copy_len + self.delay

    def generate(self, n, g):
        import torch

        k, d, s = self.copy_len, self.delay, self.n_symbols
        symbols = torch.randint(0, s, (n, k), generator=g)
        # channels: s symbols, blank, recall marker
        tokens = torch.full((n, self.seq_len), s, dtype=torch.long)
        tokens[:, :k] = symbols
        tokens[:, k + d - 1] = s + 1  # the marker: "now repeat"
        x = torch.nn.functional.one_hot(tokens, s + 2).float()
        return x, symbols

    def finish(self, xt, yt, xe, ye):
        data = classification(xt, yt.reshape(-1), xe, ye.reshape(-1), self.n_symbols)
        data.y_train, data.y_eval, data.output_steps = yt, ye, self.copy_len
        data.input_dim = xt.shape[-1]
        return data


class TemporalOrder(SequenceTask):
    """Temporal order (Hochreiter & Schmidhuber 1997): distractor symbols, and two relevant symbols
    (X or Y) at random positions in [10%, 20%) and [50%, 60%) of the sequence; the class is their
    order (XX, XY, YX, YY). Baseline ln 4."""

    name: Literal["temporal_order"] = "temporal_order"
    seq_len: int = Field(50, ge=10, description="time steps per sequence")
    n_distractors: int = Field(4, ge=1, description="distractor symbols")

    def generate(self, n, g):
        import torch

        t = self.seq_len
        tokens = torch.randint(2, 2 + self.n_distractors, (n, t), generator=g)
        p1 = torch.randint(int(0.1 * t), max(int(0.2 * t), int(0.1 * t) + 1), (n,), generator=g)
        p2 = torch.randint(int(0.5 * t), max(int(0.6 * t), int(0.5 * t) + 1), (n,), generator=g)
        a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        rows = torch.arange(n)
        tokens[rows, p1], tokens[rows, p2] = a, b
        return torch.nn.functional.one_hot(tokens, 2 + self.n_distractors).float(), a * 2 + b

    def finish(self, xt, yt, xe, ye):
        return classification(xt, yt, xe, ye, 4)


