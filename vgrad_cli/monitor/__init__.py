"""One path from a training step to the files, for any model in any loop: Monitor (monitor.py)
drives the measurement engine and is what a user holds — `vgrad run`'s loop holds the same one;
Recording (recording.py) owns what a logged step leaves on disk; pending.py keeps what waits for the
next logged step; watch.py warns during training. Imports measure, rundir, analysis (the verdict)
and report (plots, lazily); never training, integrations, sweep or cli.
"""
