"""From measurements to words: verdict.py (ratios and the verdict rule), theory.py (mean-field
predictions, numpy only; theory_bn.py for batch norm, gaussian.py the quadrature both use), and
`vgrad diagnose` (diagnose.py with indicators.py, ablation.py, advice.py, spread.py, isometry.py).
May import config, models, tasks, measure (isometry.py: the Jacobian) and rundir; never report, sweep,
training or cli.
"""
