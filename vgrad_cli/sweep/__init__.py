"""`vgrad sweep`: plan.py (the grid, validated before anything is written; the sweep directory),
run.py (running and resuming), executors.py (local process pool, Ray), report.py (sweep.csv,
summary, plot). Imports training, report, rundir, analysis and config; never cli.
"""
