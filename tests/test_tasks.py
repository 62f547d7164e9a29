"""Synthetic tasks: shapes, labels, seeding, and their documented baselines."""

import math

import pytest
import torch

from vgrad_cli.config import validate


def make(seed=0, **task):
    return validate({"task": {"train_size": 2000, "eval_size": 1000, **task}}).task.make(seed)


def test_spirals_two_classes_and_embedding():
    d = make(name="spirals")
    assert d.x_train.shape == (2000, 2) and d.output_dim == 2 and d.loss == "cross_entropy"
    assert set(d.y_train.tolist()) == {0, 1}
    assert d.baseline_loss == pytest.approx(math.log(2), abs=0.01)
    e = make(name="spirals", input_dim=10)
    assert e.x_train.shape == (2000, 10)
    # the embedding is a rotation: pairwise distances of the 2-D points are kept (noise aside)
    assert torch.linalg.matrix_rank(e.x_train) == 2


def test_parity_labels_are_the_parity_of_the_bits():
    d = make(name="parity", n_bits=5)
    bits = (d.x_train > 0).long()
    assert torch.equal(bits.sum(1) % 2, d.y_train)
    assert set(d.x_train.unique().tolist()) == {-1.0, 1.0}


def test_blobs_baseline_is_log_n_classes():
    d = make(name="blobs", n_classes=5, input_dim=3)
    assert d.x_train.shape == (2000, 3) and d.output_dim == 5
    assert d.baseline_loss == pytest.approx(math.log(5), abs=0.02)
    assert d.chance_accuracy == pytest.approx(0.2, abs=0.04)


def test_teacher_is_standardised_regression():
    d = make(name="teacher", input_dim=6, output_dim=2)
    assert d.loss == "mse" and d.chance_accuracy is None and d.y_train.shape == (2000, 2)
    assert d.baseline_loss == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("name", ["teacher", "spirals", "parity", "blobs"])
def test_same_seed_same_data_and_eval_is_held_out(name):
    a, b, c = make(0, name=name), make(0, name=name), make(1, name=name)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_eval, b.y_eval)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.x_eval) == 1000
