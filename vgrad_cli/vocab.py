"""The words of a run directory, defined once: its files, the columns of its tables, the statuses
of a run, the keys of summary.json and the verdicts. Every other module imports them from here, and
tests/test_docs.py checks that docs/run-format.md documents each column and summary key.

No torch, no numpy: the CLI's start-up, `compare` and `show` import this.
"""

from __future__ import annotations

VERSION = "0.1.0"
SCHEMA_VERSION = 1

# ----------------------------------------------------------------------------- files of a run
CONFIG_YAML = "config.yaml"
SUMMARY_JSON = "summary.json"
LAYERS_CSV = "layers.csv"
BLOCKS_CSV = "blocks.csv"               # a model with repeated blocks: one row per block (the run's view)
METRICS_CSV = "metrics.csv"
TIME_CSV = "time.csv"                   # a model that records its hidden states through time
STEPS_CSV = "steps.csv"                 # the every-step tier: loss and total gradient norm of every step
FLOAT64_CSV = "layers_float64.csv"      # step 0 again in float64 (vgrad run, where float32 underflows)
SPREAD_CSV = "init_spread.csv"          # step 0 of K seeds (vgrad run --init-seeds K)
DIAGNOSIS_JSON = "diagnosis.json"
MODEL_PT = "model.pt"
PLOTS_DIR = "plots"

# ----------------------------------------------------------------------------- table columns
LAYER_COLUMNS = [
    "step", "layer", "name", "grad_norm", "grad_max_abs", "delta_norm", "weight_norm", "weight_drift",
    "update_ratio", "act_mean", "act_std", "act_saturated_frac", "act_dead_frac", "act_unresponsive_frac",
    "whh_spectral_radius", "whh_sigma_max",  # recurrent rows only
    "note",  # "frozen", "tied to ...": why a row's cells are empty
]
# computed from a row's parameters: empty for a row that has none (frozen, tied to another's weight)
PARAM_COLUMNS = ("grad_norm", "grad_max_abs", "weight_norm", "weight_drift", "update_ratio")
# the block view (blocks.csv): one row per block, and the embedding and head around them
BLOCK_COLUMNS = [
    "step", "layer", "name", "role", "stack", "grad_norm", "grad_max_abs", "delta_norm", "weight_norm",
    "weight_drift", "update_ratio", "note",
]
METRIC_COLUMNS = [
    "step", "loss", "accuracy", "grad_norm_total", "grad_norm_clipped", "eval_loss", "eval_accuracy", "lr", "time_s",
]
# a run with a loss scaler (Monitor(scaler=...)): metrics.csv gains these columns
SCALER_COLUMNS = ["loss_scale", "skipped"]
# what vgrad measures itself: Monitor.log_metrics may not set them (the others it may, and any new name)
MEASURED_METRICS = ("step", "grad_norm_total", "grad_norm_clipped", "time_s", *SCALER_COLUMNS)
TIME_COLUMNS = ["step", "layer", "t", "delta_norm", "cell_grad_norm"]
STEP_COLUMNS = ["step", "loss", "grad_norm_total", "grad_norm_clipped", "lr", "finite", "skipped"]
SPREAD_COLUMNS = ["seed", "layer", "name", "grad_norm", "delta_norm", "act_std", "act_dead_frac"]
# how far a layer moved and how much of it is dead or saturated: the HTML report shows them at the last step
MOVEMENT_COLUMNS = ["weight_drift", "update_ratio", "act_dead_frac", "act_saturated_frac"]
TEXT_COLUMNS = ("name", "note", "role", "stack")                # a layer's name stays text: an nn.Sequential's are "0", "1", ...
INT_COLUMNS = ("step", "layer", "t")

# ----------------------------------------------------------------------------- a run's status
RUNNING = "running"          # still going, or killed
COMPLETED = "completed"
DIVERGED = "diverged"        # a non-finite loss
INTERRUPTED = "interrupted"  # SIGINT/SIGTERM, Ctrl-C, or stopped by on_problem="raise"
FAILED = "failed"            # an unexpected error
STATUSES = (RUNNING, COMPLETED, DIVERGED, INTERRUPTED, FAILED)
ENDED = (COMPLETED, DIVERGED, INTERRUPTED, FAILED)  # the statuses a finished run can have
INCOMPLETE = (RUNNING, INTERRUPTED, FAILED)         # its tables hold what was logged so far
FINAL = (COMPLETED, DIVERGED)                       # ran its course: a sweep's --resume keeps it

# who wrote the run: `vgrad run` (a config vgrad can train again) or Monitor (the user's own model)
SOURCE_RUN = "run"
SOURCE_MONITOR = "monitor"

# ----------------------------------------------------------------------------- verdicts
EXPLODING = "exploding"
DYING_RELU = "dying-relu"
VANISHING = "vanishing"
UNDERFITTING = "underfitting"
HEALTHY = "healthy"
UNKNOWN = "unknown"
VERDICTS = (EXPLODING, DYING_RELU, VANISHING, UNDERFITTING, HEALTHY, UNKNOWN)  # in order of severity

# ----------------------------------------------------------------------------- summary.json
# first end / last end (analysis/verdict.py: ends) of grad_norm and delta_norm, at the first and the
# last logged step
RATIO_KEYS = [f"{col}_ratio_{when}_step" for col in ("grad_norm", "delta_norm") for when in ("first", "last")]
TIME_RATIO_KEYS = ["time_ratio_first_step", "time_ratio_last_step"]  # through time (time.csv)
BELOW_KEY = "below_float32"  # the ratio keys whose first end underflowed float32 (their value: null)

# written when the run starts (status "running"), in this order
SUMMARY_START_KEYS = [
    "schema_version", "name", "source", "status", "started_at", "steps_planned", "seed", "versions",
    "task_loss", "baseline_loss", "chance_accuracy", "input_dim", "input_second_moment",
]
# added when it ends, in this order (a key that does not apply is null)
SUMMARY_FINAL_KEYS = [
    "status", "steps_completed", "diverged_step", "stop_signal", "stop_reason", "final_loss", "final_accuracy",
    "final_eval_loss", "final_eval_accuracy", "wall_time_s", "first_logged_step", "last_logged_step", "n_layers",
    "grad_norm_total_growth", *RATIO_KEYS, *TIME_RATIO_KEYS, "parameters_trainable", "parameters_frozen",
    "notes", "finished_at", "verdict", "verdict_reason",
]
# only where they apply
SUMMARY_OPTIONAL_KEYS = [
    BELOW_KEY, "float64_init", "time_profile", "init_spread", "error", "traceback",
    "tied", "main_stack", "n_blocks",  # a Monitor run: tied parameters; the block view's main stack
    "first_nonfinite",  # where a NaN or an infinity first appeared: step, module, direction
    "steps_skipped",    # a run with a loss scaler: the optimizer steps it skipped
]
SUMMARY_KEYS = list(dict.fromkeys(SUMMARY_START_KEYS + SUMMARY_FINAL_KEYS + SUMMARY_OPTIONAL_KEYS))

# ----------------------------------------------------------------------------- trackers (docs/integrations.md)
# What a run sends to TensorBoard, W&B, MLflow or a framework's logger: one scalar per (column, row)
# named f"{TRACKER_PREFIX}/{column}/{row}", the step's metrics as f"{TRACKER_PREFIX}/{column}", and two texts.
TRACKERS = ("tensorboard", "wandb", "mlflow")   # `vgrad export --to` and Monitor(log_to="...")
TRACKER_PREFIX = "vgrad"
TRACKER_STEP = "vgrad/step"          # W&B: the step axis of every vgrad/* key (the user's own _step is theirs)
TRACKER_VERDICT = "vgrad/verdict"    # text at the end: "<verdict> — <verdict_reason>"
TRACKER_WARNINGS = "vgrad/warnings"  # text on the step a warning showed (Monitor's on_problem messages)
TRACKER_DIR = "tensorboard"          # Monitor(log_to="tensorboard"): event files in <run dir>/tensorboard/
REPORT_HTML = "report.html"          # `vgrad report`'s default output file
