"""`vgrad run`'s side of the one recording path: trainer.py builds the model, task, optimizer and
batches from a config; loop.py is the training loop, a user of Monitor like any other, and what
only a rebuildable run can do (replay a divergence, step 0 alone); runner.py is one experiment end to
end; initspread.py measures step 0 of K seeds. Imports monitor, models, tasks, measure and analysis;
nothing above it (sweep, story, cli).
"""
