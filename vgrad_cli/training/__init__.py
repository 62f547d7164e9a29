"""The training loop (loop.py: when to measure, when to stop) and one experiment end to end
(runner.py: config -> run directory -> summary.json). Imports config (its constants), models,
tasks, measure, rundir and analysis.verdict; nothing above it (report, sweep, cli) is imported here.
"""
