"""Docs that must not drift from the code."""

from conftest import ROOT
from vgrad_cli.docgen import render
from vgrad_cli.vocab import LAYER_COLUMNS, METRIC_COLUMNS, TIME_COLUMNS


def test_config_reference_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == render(), "run: python -m vgrad_cli.docgen > docs/config.md"


def test_run_format_documents_every_column():
    text = (ROOT / "docs" / "run-format.md").read_text()
    for col in LAYER_COLUMNS + METRIC_COLUMNS + TIME_COLUMNS:
        assert f"`{col}`" in text, col


def test_readme_quickstart_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_activation_description_names_each_kind_and_its_default():
    import re

    from vgrad_cli.config import DEFAULT_ACTIVATION, ModelConfig

    desc = ModelConfig.model_fields["activation"].description
    for kind, default in DEFAULT_ACTIVATION.items():
        assert re.search(rf"\b{kind}\b[^;]*\(default {default}\)", desc), (kind, desc)
