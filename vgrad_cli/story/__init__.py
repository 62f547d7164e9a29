"""`vgrad story`: every bundled chapter (configs/*.yaml) x N seeds, run like a sweep, summarized per
chapter as median [min–max] (chapters.py: finding and naming chapters; run.py: plan and run through
the sweep machinery; report.py: story.csv and the tables; markdown.py: story.md; figures.py: a figure
per chapter). Imports sweep, report, rundir and config; never cli.
"""
