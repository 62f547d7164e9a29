"""vgrad on the user's own model: Monitor (monitor.py) drives the measurement engine from the
user's training loop and writes a run directory; watch.py warns during training. Imports measure,
rundir, analysis, training.runner (the verdict) and report (plots, lazily); never cli or sweep.
"""
