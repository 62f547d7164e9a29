"""Framework callbacks: vgrad's Monitor driven from a training framework's own hook points.

`lightning.py`: VgradCallback, a Lightning `Callback`; `huggingface.py`: VgradCallback, a
transformers `TrainerCallback`; `adapter.py`: what both share (their options, one Monitor per
training run, how it ends). Each callback module imports its framework, so it is imported only
when used: `import vgrad_cli` (and this package) imports neither. Imports monitor only.
"""
