"""Ratios from the measurements: layer 0 over the output layer, and through time.

  ratio = (value at layer 0, the input side) / (value at the output layer), for grad_norm and
  delta_norm, at the first and at the last logged step (all four go into summary.json).
  A transformer compares its first and last blocks instead (ends()): the residual stream at both
  ends of the stack; a CNN its first and last conv blocks (the head reads their global average).
  Recurrent runs add the through-time ratios ||dL/dh_0|| / ||dL/dh_T-1|| of the top stacked
  layer (time_ratio_first_step, time_ratio_last_step).
The thresholds below are the verdict's: a delta_norm or time ratio below VANISHING_RATIO (two
orders of magnitude: early layers learn ~100x slower than late ones) is vanishing, above
EXPLODING_RATIO exploding. The verdict itself is decided in one place for every command:
analysis/diagnose.py (decide, run_verdict) from the indicators in indicators.py.
"""

from __future__ import annotations

import math

from ..vocab import BELOW_KEY

VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
GROWTH = 1e3

# float32's smallest normal number. A gradient element below it is subnormal (digits lost: 18-27 %
# error at 6e-44) and below ~1.4e-45 exactly 0: a norm under this is "below float32 range", not 0.
FLOAT32_TINY = 1.1754943508222875e-38
BELOW_FLOAT32 = "below float32 range (< 1e-38)"
# how ends_label names an MLP's (and a recurrent net's) ends; the captions keep it where every run has it
MLP_ENDS = "layer 0/output"
# A step-0 grad_norm or delta_norm below this is measured again in float64 (training/loop.py,
# float64_step0): its elements are then within a few layers of float32's range, or past it.
FLOAT64_INIT_BELOW = 1e-30


def underflowed(rows: list[dict], i: int, column: str = "delta_norm") -> bool:
    """Whether row i's value is below float32's range for want of precision: under FLOAT32_TINY
    while no layer at or above it is entirely dead or has all-zero weights (a 0 below either is
    exact: LoRA's lora_B starts at zero, so lora_A's first gradients are exactly 0)."""
    v = rows[i].get(column)
    if v is None or not 0 <= v < FLOAT32_TINY:
        return False
    return not any((r.get("act_dead_frac") or 0) >= 0.999 or r.get("weight_norm") == 0 for r in rows[i:])


def stacks(rows: list[dict]) -> dict[str, list[dict]]:
    """A block view's stacks (blocks.csv, measure/blocks.py): {stack: its blocks that are not frozen
    (a frozen block measures nothing), in forward order}, the main stack first — the one with the
    most blocks, frozen ones counted; a tie: the later one — then the others in forward order.
    {} for module rows."""
    blocks = [r for r in rows if r.get("role") == "block"]
    count, last = {}, {}
    for i, r in enumerate(blocks):
        count[r.get("stack")] = count.get(r.get("stack"), 0) + 1
        last[r.get("stack")] = i
    if not blocks:
        return {}
    main = max(last, key=lambda s: (count[s], last[s]))
    return {s: [r for r in blocks if r.get("stack") == s and r.get("note") != "frozen"]
            for s in [main] + [s for s in count if s != main]}


def main_blocks(rows: list[dict]) -> list[dict]:
    """The main stack's trainable blocks, those the verdict's ratios compare (stacks()); [] for
    module rows."""
    return next(iter(stacks(rows).values()), [])


def ends(rows: list[dict], kind: str | None = None) -> tuple[dict, dict]:
    """The two rows a ratio compares: layer 0 and the output layer. For a transformer, its first and
    last blocks: δ there is the gradient at the residual stream, the same (batch, time, width)
    tensor at both ends, so the ratio says what the blocks do to it. Its embedding's δ also carries
    the first LayerNorm's 1/std of the small embedding (a scale, not a gradient path), and the
    output row's δ is at the logits, another tensor.
    For a CNN, its first and last conv blocks: the head reads the last block's global average, so
    that block's δ is the output's spread over H·W pixels (~1/sqrt(H·W) of it), a bias unrelated to
    depth; conv0's and the last block's δ are the same (batch, width, H, W) tensor.
    For a block view (any model with repeated blocks), the first and last trainable blocks of its
    main stack, for the same reason; with one block, the stream entering it (the embedding row's δ)
    and the stream leaving it."""
    blocks = main_blocks(rows)
    if len(blocks) >= 2:
        return blocks[0], blocks[-1]
    if blocks:
        entering = next((r for r in rows if r.get("role") == "embedding"), None)
        if entering is not None:
            return entering, blocks[0]
    # (at least two blocks: with one, "first / last block" would be a block over itself)
    if kind == "transformer" and len(rows) >= 4:  # embedding, block0 .. block{d-1}, output
        return rows[1], rows[-2]
    if kind == "cnn" and len(rows) >= 3:  # conv0 .. conv{d-1}, output
        return rows[0], rows[-2]
    return rows[0], rows[-1]


def ends_label(rows: list[dict], kind: str | None = None) -> str:
    """How the text names the ratio of ends(): 'layer 0/output', or e.g. 'block0/block5', 'conv0/conv11'."""
    first, last = ends(rows, kind)
    if last is not rows[-1] or first.get("role"):
        return f"{first.get('name')}/{last.get('name')}"
    return MLP_ENDS


def factor_span(rows: list[dict], kind: str | None = None) -> tuple[list[dict], int]:
    """The rows the per-layer factor runs over (sorted by layer): from ends()'s first row on, and
    how many of them are hidden (all but the last, the output). An MLP: layer 0 .. output, depth
    hidden; a transformer: block0 .. output, its blocks; a block view: its main stack's blocks.
    theory's `measured` and the init spread both use it, so their factors are one definition."""
    rows = sorted(rows, key=lambda r: r["layer"])
    if not rows:
        return [], 0
    blocks = main_blocks(rows)
    if len(blocks) >= 2:
        after = [r for r in rows if r["layer"] > blocks[-1]["layer"]][:1]
        return blocks + after, len(blocks)
    first, _ = ends(rows, kind)
    span = rows[next(i for i, r in enumerate(rows) if r is first):]
    return span, len(span) - 1


def first_last_ratio(rows: list[dict], column: str, kind: str | None = None) -> float | None:
    """Layer 0 over the last layer (a transformer or CNN: first over last block) for one logged step's
    rows (sorted by layer)."""
    if not rows:
        return None
    first, last = ends(rows, kind)
    return _ratio(first.get(column), last.get(column))


def _ratio(first, last) -> float | None:
    if first is None or last is None:
        return None
    if last == 0:
        return math.inf if first > 0 else None
    return first / last


BELOW_SHORT = "< 1e-38"       # how tables (sweep.csv, compare, the sweep table) show such a ratio


def ratios(first_rows: list[dict], last_rows: list[dict], first_float64: list[dict] | None = None,
           kind: str | None = None) -> dict:
    """The four ratios (ends() says which rows). Where the first end's value underflowed float32,
    the ratio is not the 0 float32 gives: the first step's is the float64 one (first_float64, when
    step 0 was measured again), else None, and its key is listed under BELOW_KEY."""
    out, below = {}, []
    for col in ("grad_norm", "delta_norm"):
        for when, rows in (("first", first_rows), ("last", last_rows)):
            key = f"{col}_ratio_{when}_step"
            out[key] = first_last_ratio(rows, col, kind)
            if rows and underflowed(rows, _first_end(rows, kind), col):
                out[key] = first_last_ratio(first_float64, col, kind) if when == "first" and first_float64 else None
                if out[key] is None:
                    below.append(key)
    if below:
        out[BELOW_KEY] = below
    return out


def _first_end(rows: list[dict], kind: str | None) -> int:
    first, _ = ends(rows, kind)
    return next(i for i, r in enumerate(rows) if r is first)


def time_profile(time_rows: list[dict]) -> tuple[int, list[float]]:
    """The top stacked layer's ||dL/dh_t|| over t (the layer the output head reads)."""
    if not time_rows:
        return -1, []
    top = max(r["layer"] for r in time_rows)
    return top, [r["delta_norm"] for r in time_rows if r["layer"] == top]


def cell_profile(time_rows: list[dict]) -> list[float]:
    """The top stacked layer's ||dL/dc_t|| over t: an LSTM's cell state; [] for rnn/gru (and runs
    written before time.csv had the column)."""
    layer, _ = time_profile(time_rows)
    prof = [r.get("cell_grad_norm") for r in time_rows if r["layer"] == layer]
    return prof if prof and all(v is not None for v in prof) else []


def cell_ratio(time_rows: list[dict]) -> float | None:
    """||dL/dc_first|| / ||dL/dc_last|| of the top layer's cell state (an LSTM), else None."""
    prof = cell_profile(time_rows)
    return _ratio(prof[0], prof[-1]) if prof else None


def judged_time_ratio(h_ratio: float | None, c_ratio: float | None) -> float | None:
    """The through-time ratio the verdict reads. An LSTM's memory goes back through its cell state,
    so when the cell carries the gradient back (c_ratio >= VANISHING_RATIO) a low h ratio is not
    vanishing: the h ratio also holds a one-off factor of the last step, which the head reads
    directly (docs/run-format.md). Capped so that it never reads as exploding on the cell's account."""
    if h_ratio is not None and c_ratio is not None and h_ratio < VANISHING_RATIO <= c_ratio:
        return min(c_ratio, EXPLODING_RATIO)
    return h_ratio


def time_ratio(time_rows: list[dict]) -> float | None:
    """||dL/dh_first|| / ||dL/dh_last|| of the top layer, for one logged step's time.csv rows."""
    _, prof = time_profile(time_rows)
    return _ratio(prof[0], prof[-1]) if prof else None


def time_ratios(first_time: list[dict], last_time: list[dict]) -> dict:
    """time_ratio at the first and the last logged step."""
    return {f"time_ratio_{when}_step": time_ratio(rows) for when, rows in (("first", first_time), ("last", last_time))}


def sample_profile(first_time: list[dict], last_time: list[dict], points: int = 32) -> dict | None:
    """A few t values of the through-time profile, for the console and summary.json."""
    layer, first = time_profile(first_time)
    _, last = time_profile(last_time)
    if not first:
        return None
    n = len(first)
    ts = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)}) if n > points else list(range(n))
    out = {"layer": layer, "t": ts, "first_step": [first[t] for t in ts],
           "last_step": [last[t] for t in ts] if len(last) == n else None}
    cell_first, cell_last = cell_profile(first_time), cell_profile(last_time)
    if len(cell_first) == n:  # an LSTM: its cell state's profile too
        out["cell_first_step"] = [cell_first[t] for t in ts]
        out["cell_last_step"] = [cell_last[t] for t in ts] if len(cell_last) == n else None
    return out


def run_stats(run) -> dict:
    """A loaded run's (rundir.store.Run) summary numbers; for an unfinished run, the same read off its
    tables."""
    s = dict(run.summary)
    steps = run.steps
    kind = (run.config.get("model") or {}).get("kind") if isinstance(run.config, dict) else None
    if steps:
        s.setdefault("first_logged_step", steps[0])
        s.setdefault("last_logged_step", steps[-1])
        measured = ratios(run.layer_rows(steps[0]), run.layer_rows(steps[-1]), run.float64, kind)
        below = set(s.get(BELOW_KEY) or []) | set(measured.pop(BELOW_KEY, []))
        for key, value in measured.items():
            if s.get(key) is None and key not in s.get(BELOW_KEY, []):  # an older summary's 0 stays
                s[key] = value
        if below:
            s[BELOW_KEY] = sorted(below)
    if run.time and steps:
        for when, step in (("first", steps[0]), ("last", steps[-1])):
            if s.get(f"time_ratio_{when}_step") is None:
                s[f"time_ratio_{when}_step"] = time_ratio(run.time_rows(step))
    if run.metrics and s.get("final_loss") is None:
        last = run.metrics[-1]
        s["final_loss"], s["final_accuracy"] = last.get("loss"), last.get("accuracy")
        evals = [m for m in run.metrics if m.get("eval_loss") is not None]
        if evals:
            s["final_eval_loss"], s["final_eval_accuracy"] = evals[-1]["eval_loss"], evals[-1].get("eval_accuracy")
    if run.metrics and s.get("wall_time_s") is None:
        s["wall_time_s"] = run.metrics[-1].get("time_s")
    return s
