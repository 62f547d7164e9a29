"""The measurement engine: what is computed on a logged step (per-layer gradient, δ, weight and
activation statistics; the gradient through time). Imports torch and the activation registry only;
never the training loop, run directories, analysis or rendering.
"""
