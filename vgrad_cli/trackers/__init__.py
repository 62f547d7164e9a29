"""Trackers: a run's logged steps sent where practitioners already look — TensorBoard, Weights &
Biases, MLflow, a Lightning logger — as the run trains (Monitor(log_to=...)) or afterwards
(`vgrad export`, monitor/export.py).

`tracking.py`: the names (vgrad/<column>/<row>), the fan-out to every sink, and what `log_to` may
be; `sinks.py`: one small class per tracker. Each tracker library is imported inside the sink that
uses it, so `import vgrad_cli` imports none of them. Imports vocab and errors only.
"""
