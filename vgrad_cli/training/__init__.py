"""The training loop (loop.py: when to measure, when to stop), one experiment end to end
(runner.py: config -> run directory -> summary.json), and step 0 of K seeds without training
(initspread.py). Imports config (its constants), models, tasks, measure, rundir and analysis;
nothing above it (report, sweep, cli) is imported here.
"""
