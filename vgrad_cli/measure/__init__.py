"""The measurement engine: what is computed on a logged step. layers.py (what a layer is; finding a
model's layers), recorder.py (what the hooks record), norms.py (batched norms), recurrent.py (W_hh
spectra, time.csv rows), probes.py (the statistics). Imports torch and the activation registry only;
never training, rundir or analysis.
"""
