"""What a person sees: console.py (rich tables and progress), plots.py (matplotlib, imported lazily;
axes.py holds its drawing helpers) and compare.py (runs side by side; compare_render.py its output
formats). Reads run directories through rundir and numbers through analysis; never imports torch,
training, sweep or cli.
"""
