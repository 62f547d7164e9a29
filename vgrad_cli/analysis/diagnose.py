"""`vgrad diagnose RUN`: check a run for every symptom of vanishing and exploding gradients, set the
measured per-layer factor against mean-field theory, and say what to change.

    diagnose(run_dir) -> dict      also written to <run_dir>/diagnosis.json
    short_report(diagnosis)        3-6 lines for the end of `vgrad run`

The indicators (indicators.py, and the ablation probe in ablation.py) each say
present | absent | not measurable, with evidence and threshold. The verdict reads them in order of
severity: exploding > dying-relu > vanishing > underfitting > healthy. Recommendations
(advice.py) follow from the verdict and the config. Only diagnosis.json is written: the
run's tables are never touched.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import indicators as ind
from .. import vocab as V
from ..errors import UsageError

DIAGNOSIS_VERSION = 2  # 2: block views read stack by stack, loss windows of the step span


def load(run_dir) -> tuple:
    """The run, checked: (Run, validated Config, resolved config dict). Bad input -> UsageError."""
    from ..config import validate
    from ..rundir.store import load_run

    path = Path(run_dir)
    if not path.exists():
        raise UsageError(f"no run '{path}': no such directory")
    run = load_run(path)  # not a directory / no summary.json / corrupt tables -> UsageError
    for name in (V.LAYERS_CSV, V.METRICS_CSV):
        if not (path / name).is_file():
            raise UsageError(f"'{path}' has no {name}: nothing to diagnose")
    if not run.steps or not run.metrics:
        raise UsageError(f"'{path}' logged no step yet: nothing to diagnose")
    if not run.config:
        raise UsageError(f"'{path}' has no config.yaml: the diagnosis needs the model's config")
    if run.config.get("source") == V.SOURCE_MONITOR:  # a model of the user's own: no vgrad config to validate
        return run, None, run.config
    return run, validate(run.config, f"{path}/config.yaml"), run.config


def diagnose(run_dir, k: int | None = None, ablation: bool = True, write: bool = True,
             init_spread: dict | None = None, jacobian: bool | None = None) -> dict:
    """Every indicator, the theory, the verdict and recommendations for one run. init_spread: a
    spread over seeds measured now (else the run's own, from `--init-seeds`); jacobian: compute the
    Jacobian spectrum at init (torch; default: when the ablation probe runs)."""
    from .advice import recommend
    from .theory import run_data, theory_for_run

    run, cfg, raw = load(run_dir)
    baseline = run.summary.get("baseline_loss")
    ablated = None
    if ablation and cfg is None:
        ablated = ind.indicator(5, "reliance_on_upper_layers", "reliance on upper layers (ablation)", "not measurable",
                                "the ablation probe rebuilds the model from its config, and this model is your own "
                                "(a Monitor run): vgrad cannot rebuild it", {}, "")
    elif ablation:
        ablated = _ablation(run.path, cfg, baseline, k)
    items = indicators(run, raw, ablated)
    by_key = {i["key"]: i for i in items}
    th = theory_section(run, theory_for_run(run.path))
    verdict, detail, recovered = decide(by_key)
    at_init, disagree = _at_init(run, cfg, init_spread, ablation if jacobian is None else jacobian)
    detail += f"; {disagree}" if disagree else ""
    out = {
        "diagnosis_version": DIAGNOSIS_VERSION, "run": run.name, "status": run.status,
        "model": run.model_text(), "verdict": verdict, "verdict_detail": detail,
        "first_nonfinite": run.summary.get("first_nonfinite"),  # where a NaN first appeared (Monitor, vgrad run)
        "steps_skipped": run.summary.get("steps_skipped"),      # a loss scaler's skipped steps
        "present": [i["key"] for i in items if i["status"] == "present"],
        "indicators": items, "theory": th,
        "recommendations": recommend(raw, verdict, by_key, recovered, run_data(raw, run.summary)),
        **at_init,
    }
    out = _clean(out)
    if write:
        from ..rundir.files import write_json_atomic

        write_json_atomic(run.path / V.DIAGNOSIS_JSON, out)
    return out


def indicators(run, raw: dict, ablated: dict | None = None) -> list[dict]:
    """The eight indicators, read off the run's tables (the ablation probe, which needs torch and
    the weights, is passed in already measured, or reported as skipped)."""
    s = run.summary
    baseline, chance = s.get("baseline_loss"), s.get("chance_accuracy")
    model, train = raw.get("model") or {}, raw.get("train") or {}
    return [
        ind.slow_training(run, baseline),
        ind.poor_performance(run, baseline, chance),
        ind.gradient_decay(run, model),
        ind.unresponsive_units(run),
        ablated or ind.indicator(5, "reliance_on_upper_layers", "reliance on upper layers (ablation)",
                                 "not measurable", "ablation probe skipped (--no-ablation)", {}, ""),
        ind.weights_barely_moving(run),
        ind.dying_relu(run, model.get("activation")),
        ind.exploding(run, baseline, train.get("clip_norm"), model),
    ]


def run_verdict(run) -> tuple[str, str]:
    """The run's verdict and its reason: the same rule as `vgrad diagnose` (decide() over the
    indicators), so summary.json, `run`, `show`, `runs` and diagnosis.json never disagree. The
    verdict never depends on the ablation probe, which is left out here (no torch needed)."""
    if not run.steps or not run.metrics:
        return V.UNKNOWN, "nothing was measured (no logged step)"
    verdict, detail, _ = decide({i["key"]: i for i in indicators(run, run.config or {})})
    return verdict, detail


def stored_or_fresh(run) -> dict:
    """A loaded run's diagnosis: its diagnosis.json when that is current (written after the run
    ended), else computed now without the ablation probe (no torch) and without writing."""
    import json

    path = run.path / V.DIAGNOSIS_JSON
    if not run.incomplete and path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(d, dict) and d.get("diagnosis_version") == DIAGNOSIS_VERSION and "indicators" in d:
                return d
        except (OSError, ValueError):
            pass  # unreadable: compute it again
    return diagnose(run.path, ablation=False, write=False)


def _ablation(path, cfg, baseline, k):
    from .ablation import ablation

    return ablation(path, cfg, baseline, k)


def _at_init(run, cfg, init_spread, jacobian: bool) -> tuple[dict, str | None]:
    """The seeds' spread at step 0 (`init_spread`) and the Jacobian spectrum (`jacobian`), and the
    sentence the verdict gets when the seeds read differently (spread.py, isometry.py)."""
    from .spread import note, stored

    out = {}
    spread = init_spread or stored(run)
    if spread:
        out["init_spread"] = spread
    if jacobian:
        from .isometry import jacobian_at_init

        try:
            out["jacobian"] = jacobian_at_init(cfg) if cfg is not None else {
                "applicable": False, "reason": "a model of your own (a Monitor run): vgrad cannot rebuild it at init"}
        except Exception as e:  # noqa: BLE001 - an optional analysis must not fail a finished run: say why
            out["jacobian"] = {"applicable": False, "computed": False,
                               "reason": f"not computed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    model = (run.config or {}).get("model") or {}
    return out, note(spread, model.get("width"), model.get("depth"))


def decide(by_key: dict) -> tuple[str, str, bool]:
    """(verdict, one sentence of why, recovered). Severity order; the gradient evidence decides
    the kind of problem, the training indicators (1, 2, 5, 6) whether it cost anything."""
    on = {k for k, v in by_key.items() if v["status"] == "present"}
    # Units that die behind residual connections cannot stop the stream's gradient: when it vanishes
    # too, the vanishing is the problem and the dead units come with it (a Post-LN stack at a high
    # learning rate); in a plain chain, dead units are what cuts the gradient (dying-relu first).
    behind = "dying_relu" in on and "gradient_decay" in on and by_key["dying_relu"]["evidence"].get("residual")
    effects = [by_key[k]["name"] for k in ("slow_training", "poor_performance", "reliance_on_upper_layers",
                                           "weights_barely_moving", "unresponsive_units") if k in on]
    if behind:
        on.discard("dying_relu")
        effects.append(by_key["dying_relu"]["name"] + f" ({by_key['dying_relu']['summary']})")
    also = f"; with: {', '.join(effects)}" if effects else ""
    if "exploding" in on:
        return V.EXPLODING, by_key["exploding"]["summary"] + also, False
    if "dying_relu" in on:
        return V.DYING_RELU, by_key["dying_relu"]["summary"] + also, False
    if "gradient_decay" in on:
        g = by_key["gradient_decay"]
        recovered = bool(g["evidence"].get("recovered")) and not ({"slow_training", "poor_performance"} & on)
        if recovered:
            return V.VANISHING, ("the gradient vanished at the start but training recovered it, and the task was "
                                 f"learned: {g['summary']}"), True
        return V.VANISHING, g["summary"] + also, False
    reach, known = _reach(by_key.get("gradient_decay"))
    if {"slow_training", "poor_performance"} & on:
        loss = "the loss stays high" if "poor_performance" in on else "the loss stalls"
        why = f"{loss} but {reach}: not a gradient problem" if known else \
            f"{loss}; {reach}, so nothing says whether a gradient problem is behind it"
        return V.UNDERFITTING, why + also, False
    if effects:  # e.g. reliance on upper layers alone: worth reading, but no gradient problem behind it
        return V.HEALTHY, (f"no gradient problem: {reach} and the loss falls; present "
                           f"nonetheless: {', '.join(effects)}"), False
    return V.HEALTHY, "no indicator present" + ("" if reach == REACHES else f"; {reach}"), False


REACHES = "the gradient reaches every layer"


def _reach(g: dict | None) -> tuple[str, bool]:
    """What the gradient evidence lets the verdict say of a gradient that did not vanish, and whether
    it was measured at all: never "reaches every layer" without δ (or, said so, the gradient norms)."""
    ev = (g or {}).get("evidence") or {}
    if g is not None and g["status"] == "not measurable":
        return f"the gradient across layers was not measured ({g['summary']})", False
    if ev.get("read_from") == "grad_norm":
        return (f"the gradient norms reach every layer (δ was not measured ({ev.get('no_delta')}): read from "
                "grad_norm)"), True
    return REACHES, True


def theory_section(run, th: dict | None) -> dict:
    """Mean-field prediction next to the measured per-layer (or per-time-step) factor at step 0."""
    from . import residual
    from .verdict import BELOW_FLOAT32, factor_span, underflowed
    from .theory import measured_factor
    from .recurrent import recurrent_theory

    out = dict(th or {"applicable": False, "reason": "no readable config.yaml/layers.csv"})
    # from ends()'s first row: a transformer's block0 (its embedding's δ also carries the first
    # LayerNorm's 1/std), the init spread measures the same span (verdict.factor_span)
    first, hidden = factor_span(run.layer_rows(run.steps[0]), (run.config.get("model") or {}).get("kind"))
    if hidden >= 2 and underflowed(first, 0):  # float32 lost layer 0's delta: the float64 step 0 has it
        m = measured_factor(run.float64, hidden) if run.float64 and run.steps[0] == 0 else None
        out.update(measured_factor=m, measured_step=run.steps[0], measured_precision="float64" if m else None,
                   measured_over_predicted=m / out["factor"] if m and out.get("factor") else None)
        if m is None:
            out["measured_note"] = f"layer 0's delta_norm is {BELOW_FLOAT32} and step 0 was not measured in float64"
    elif out.get("measured_factor") is None and hidden >= 2:
        out["measured_factor"] = measured_factor(first, hidden)  # measured even where no theory applies
        out["measured_step"] = run.steps[0]
    stream = residual.section((run.config or {}).get("model") or {}, first)
    if stream is not None:  # a residual MLP or CNN without norm: the forward stream's growth, predicted and measured
        out["residual"] = stream
    if run.time:  # the decay per time step, and W_hh's rho and sigma_max beside it
        out["recurrent"] = rec = recurrent_theory(run)
        if rec["time_factor"] is not None:
            out["measured_time_factor"] = rec["time_factor"]
    return out


def _clean(x):
    """JSON without NaN/Infinity: a non-finite number becomes null (its meaning is in the text)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def theory_line(th: dict) -> str:
    """The theory section in words: the prediction(s), the measurement, and a note line where the
    prediction needs a caveat (which of two predictions to trust, a small batch)."""
    at = th.get("factor_at_depth")
    if not th.get("applicable"):
        line = f"theory: not applicable ({th.get('reason')})"
    else:
        xi = th.get("depth_scale")
        xi_text = "infinite (critical)" if xi is None else f"{xi:.3g} layers"
        if "sigma_w2" in th:  # plain MLP: the fixed point, then the net's own depth
            bias = f", bias {th['bias']:g}" if th.get("bias") else ""
            line = (f"theory (mean field, {th['activation']} + {th['init']}, sigma_w^2 {th['sigma_w2']:.3g}{bias}): "
                    f"per-layer factor at the fixed point sqrt(chi_1) = {th['factor']:.3f} ({th['regime']}), "
                    f"depth scale {xi_text}")
            if at is not None:
                line += f"; at this depth, from the data: {at:.3f} ({th['regime_at_depth']})"
        else:
            line = (f"theory ({th['theory']}, {th['activation']}): per-layer factor {th['factor']:.3f}, "
                    f"depth scale {xi_text}: {th['regime_at_depth'] or th['regime']} at this depth")
    m = th.get("measured_factor")
    if m is not None:
        in64 = " in float64 (float32 underflows)" if th.get("measured_precision") == "float64" else ""
        line += f"; measured at step {th.get('measured_step', 0)}{in64}: {m:.3f}"
        if th.get("residual"):
            line += " (delta per layer: it shrinks as the residual stream grows)"
        ref, ratio = ("at depth", th.get("measured_over_at_depth")) if "sigma_w2" in th and at else \
            ("predicted", th.get("measured_over_predicted"))
        if ratio is not None:
            line += f" ({ratio:.2f} x {ref})"
    if th.get("measured_note"):
        line += f"; no measured factor: {th['measured_note']}"
    if th.get("measured_time_factor") is not None:
        line += f"; through time, per step: {th['measured_time_factor']:.3f}"
    if th.get("residual"):
        from .residual import line as residual_line

        line += "\n" + residual_line(th["residual"])
    if th.get("recurrent"):
        from .recurrent import recurrent_line

        line += "\n" + recurrent_line(th["recurrent"])
    return line + (f"\n  theory note: {th['note']}" if th.get("applicable") and th.get("note") else "")


def short_report(diagnosis: dict, headline: bool = True, ref: str | None = None, command: bool = True) -> list[str]:
    """3-6 lines: the verdict, the present indicators, the top recommendation. `vgrad run` and
    `show` print the verdict line themselves (headline=False): the symptoms then lead. ref: how to
    name the run in a command (default its name, which `vgrad diagnose` finds under runs/).
    command=False: a recommendation's line ends with its title and ':' (the caller prints the
    command itself)."""
    ref = ref or diagnosis["run"]
    present = [i for i in diagnosis["indicators"] if i["status"] == "present"]
    if headline:
        lines = [f"diagnosis: {diagnosis['verdict']} — {diagnosis['verdict_detail']}"]
    else:
        lines = [f"symptoms present (explained by `vgrad diagnose {ref}`):"] if present else []
    for i in present[:3]:
        lines.append(f"  ({i['id']}) {i['name']}: {i['summary']}")
    if len(present) > 3:
        lines.append(f"  ... and {len(present) - 3} more present indicator(s): `vgrad diagnose {ref}`")
    recs = diagnosis.get("recommendations") or []
    if recs:
        r = recs[0]
        tail = (r["command"] if command else "") if r["command"] else r["why"]
        lines.append(f"try{' (optional)' if r.get('optional') else ''}: {r['title']}: {tail}".rstrip())
    return lines[:6]
