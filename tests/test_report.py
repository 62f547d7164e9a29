"""`vgrad report` in a real browser: Debian's headless Chromium renders the HTML file of an MLP run,
a Monitor run of a transformer and a 3-run comparison, at a desktop's and a phone's width; a test
fails on a page that is blank (its screenshot nearly one colour), wider than a phone's window, or
that logs anything to the console. VGRAD_SCREENSHOTS=DIR keeps the screenshots there to look at.
Also: `vgrad_cli.load_run` and the notebook display, and the report's bad-input errors."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import CONFIGS, ROOT, only_run_dir, seeded
from test_monitor import train as fit  # the plain loop: forward, backward, mon.step, update

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Appended to a copy of the report for the test only (the report itself has no script): it says on the
# console whether the page is wider than the window (a phone would scroll the whole page sideways).
PROBE = ("<script>var w = document.documentElement.scrollWidth;"
         "if (w > window.innerWidth + 1) console.error('probe: page ' + w + ' px wide in a ' + window.innerWidth + ' px window');"
         "console.log('probe: ok, ' + document.body.innerText.length + ' characters');</script>")
DESKTOP, PHONE = (1280, 2400), (390, 2400)


def render(html: Path, png: Path, size) -> list[str]:
    """Chromium's screenshot of `html` (with the probe) into `png`; returns its console messages."""
    assert CHROMIUM, "the report tests need Debian's chromium: apt-get install chromium (make install-browser)"
    probed = png.with_suffix(".probe.html")
    probed.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
                              f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", probed.as_uri()],
                             capture_output=True, text=True, timeout=120)
    probed.unlink()
    assert png.is_file(), out.stderr[-2000:]
    return [line.split("] ", 1)[-1] for line in out.stderr.splitlines() if ":CONSOLE" in line]


def dominant_share(png: Path) -> float:
    """The share of the screenshot's pixels that have its most common colour (a blank page: ~1)."""
    from PIL import Image

    with Image.open(png) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 24)
    return max(n for n, _ in colors) / sum(n for n, _ in colors)


def shots_dir(tmp_path) -> Path:
    d = Path(os.environ.get("VGRAD_SCREENSHOTS") or tmp_path / "shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_in_browser(html: Path, shots: Path, name: str):
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        png = shots / f"{name}-{label}.png"
        console = render(html, png, size)
        assert len(console) == 1 and re.search(r'"probe: ok, \d{4,} characters"', console[0]), (label, console)
        assert dominant_share(png) < 0.95, (label, dominant_share(png))  # something drawn, not a blank page


def check_file(html: Path):
    text = html.read_text(encoding="utf-8")
    assert html.stat().st_size < 2 * 1024 * 1024, html.stat().st_size
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # nothing fetched from elsewhere
    assert "<script" not in text and "@media print" in text and "@media (max-width: 600px)" in text
    return text


# ---------------------------------------------------------------------------------------- runs
def vgrad(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, "-m", "vgrad_cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three vgrad runs (deep sigmoid, ReLU + Kaiming, sigmoid + batch norm) and a Monitor run of a
    torch TransformerEncoder."""
    from typer.testing import CliRunner

    from vgrad_cli.cli.main import app

    root = tmp_path_factory.mktemp("report-runs")
    made = {}
    for name, config in (("sigmoid", "01_deep_sigmoid"), ("relu", "03_relu_kaiming"), ("bn", "05_sigmoid_batchnorm")):
        sets = [a for s in seeded() for a in ("--set", s)]
        args = ["run", CONFIGS / f"{config}.yaml", "--out", root / name, "--steps", 100, "--quiet", *sets]
        assert CliRunner().invoke(app, list(map(str, args))).exit_code == 0
        made[name] = only_run_dir(root / name)
    made["transformer"] = transformer_run(root / "transformer")
    return made


class Encoder(nn.Module):
    def __init__(self, width=32, depth=3):
        super().__init__()
        self.embed = nn.Linear(8, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def transformer_run(out: Path) -> Path:
    from vgrad_cli import Monitor

    torch.manual_seed(0)
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 6, 8), torch.randint(0, 2, (16,))
    with Monitor(model, optimizer=opt, out=out, name="encoder", every=5, on_problem=None) as mon:
        fit(model, mon, 31, opt=opt, x=x, y=y)
    return mon.path


# ---------------------------------------------------------------------------------------- the report
@pytest.mark.slow
def test_the_browser_check_catches_a_blank_page_and_a_console_error(tmp_path):
    blank, broken = tmp_path / "blank.html", tmp_path / "broken.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    broken.write_text("<!DOCTYPE html><html><body><h1>report</h1><script>missing()</script></body></html>")
    with pytest.raises(AssertionError):
        check_in_browser(blank, tmp_path, "blank")
    console = render(broken, tmp_path / "broken.png", PHONE)
    assert any("missing is not defined" in line for line in console)


@pytest.mark.slow
def test_report_of_an_mlp_run_renders(runs, tmp_path):
    out = tmp_path / "mlp.html"
    res = vgrad("report", runs["sigmoid"], "-o", out)
    assert "report:" in res.stderr
    text = check_file(out)
    for part in ("vanishing", "per-layer gradient", "hidden0", "evidence", "what to change", "figures",
                 "gradient per layer at each logged step"):
        assert part in text, part
    assert text.count("data:image/png;base64,") == 4  # gradient flow, heatmap, loss, activations
    check_in_browser(out, shots_dir(tmp_path), "mlp")


@pytest.mark.slow
def test_report_of_a_monitor_transformer_run_renders(runs, tmp_path):
    out = tmp_path / "transformer.html"
    vgrad("report", runs["transformer"], "-o", out)
    text = check_file(out)
    assert "encoder.layers.2" in text and "recorded by Monitor" in text  # a block, or its modules
    check_in_browser(out, shots_dir(tmp_path), "transformer")


@pytest.mark.slow
def test_report_of_three_runs_compares_them(runs, tmp_path):
    out = tmp_path / "three.html"
    vgrad("report", runs["sigmoid"], runs["relu"], runs["bn"], "-o", out)
    text = check_file(out)
    assert "Comparison" in text and text.count('<h2 id="run-') == 3
    assert all(f'href="#run-{i}"' in text for i in range(3))
    check_in_browser(out, shots_dir(tmp_path), "three")


def test_report_says_what_is_wrong_and_writes_nothing(tmp_path, cli, runs_dir_with_one_run):
    run = runs_dir_with_one_run
    res = cli("report", run, "-o", tmp_path / "missing-folder" / "r.html")
    assert res.exit_code == 2 and "the folder" in res.output and "does not exist" in res.output
    res = cli("report", run, "-o", tmp_path / "r.pdf")
    assert res.exit_code == 2 and "ending in .html" in res.output
    res = cli("report", "no-such-run", "--runs-dir", tmp_path, "-o", tmp_path / "r.html")
    assert res.exit_code == 2 and "no run 'no-such-run'" in res.output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = cli("report", run, "-o", locked / "r.html")
        if os.geteuid() != 0:  # root writes anyway; everyone else is told
            assert res.exit_code == 2 and "cannot write" in res.output
    finally:
        locked.chmod(0o700)
    assert not list(tmp_path.glob("*.html")) and not list((tmp_path / "locked").glob("*.tmp"))


@pytest.fixture
def runs_dir_with_one_run(tmp_path, cli, write_config):
    from conftest import small

    assert cli("run", write_config(small()), "--out", tmp_path / "runs", "--quiet", "--no-plots").exit_code == 0
    return only_run_dir(tmp_path / "runs")


# ---------------------------------------------------------------------------------------- notebooks
def test_load_run_gives_dataframes_and_html(runs_dir_with_one_run):
    import csv

    import vgrad_cli

    run = vgrad_cli.load_run(runs_dir_with_one_run)
    with open(runs_dir_with_one_run / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(run.layers) == len(rows) and list(run.layers.columns) == list(rows[0])
    assert run.layers["grad_norm"].tolist() == [float(r["grad_norm"]) for r in rows]
    assert run.layers["update_ratio"].dtype == float and run.layers["update_ratio"].isna().any()  # the last step's
    assert run.metrics["step"].tolist() == sorted({int(r["step"]) for r in rows})
    html = run._repr_html_()
    assert run.verdict in html and "hidden0" in html and "<table" in html


def test_monitor_displays_itself_in_a_notebook(tmp_path):
    from vgrad_cli import Monitor

    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, optimizer=opt, out=tmp_path, every=1, plots=False, on_problem=None)
    for _ in range(2):
        opt.zero_grad()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        mon.step(loss)
        opt.step()
    during = mon._repr_html_()
    assert "provisional" in during and "<table" in during  # the run so far, while it trains
    mon.close()
    assert "provisional" not in mon._repr_html_() and mon.summary["verdict"] in mon._repr_html_()


def test_load_run_without_pandas_says_what_to_install(runs_dir_with_one_run):
    code = ("import sys; sys.modules['pandas'] = None; import vgrad_cli\n"
            f"try:\n    vgrad_cli.load_run({str(runs_dir_with_one_run)!r})\n"
            "except ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pip install 'vgrad[notebook]'" in out.stdout
