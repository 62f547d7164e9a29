"""Docs that must not drift from the code."""

from conftest import ROOT
from vgrad_cli.docgen import render
from vgrad_cli.vocab import LAYER_COLUMNS, METRIC_COLUMNS, TIME_COLUMNS


def test_config_reference_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == render(), "run: python -m vgrad_cli.docgen > docs/config.md"


def test_run_format_documents_every_file_column_status_and_summary_key():
    from vgrad_cli import vocab as V

    text = (ROOT / "docs" / "run-format.md").read_text()
    words = (LAYER_COLUMNS + METRIC_COLUMNS + V.SCALER_COLUMNS + TIME_COLUMNS + V.SPREAD_COLUMNS + V.BLOCK_COLUMNS
             + V.SUMMARY_KEYS + list(V.STATUSES)
             + [V.SOURCE_RUN, V.SOURCE_MONITOR])
    assert not [w for w in words if f"`{w}`" not in text]
    files = [V.CONFIG_YAML, V.SUMMARY_JSON, V.LAYERS_CSV, V.BLOCKS_CSV, V.STEPS_CSV, V.METRICS_CSV, V.TIME_CSV, V.FLOAT64_CSV, V.SPREAD_CSV,
             V.DIAGNOSIS_JSON, V.MODEL_PT, V.PLOTS_DIR + "/"]
    assert not [f for f in files if f not in text]


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
