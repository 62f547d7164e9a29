"""The package's structure, stated once and checked: imports run down the layers, never up, and no
module imports itself back through another (imports inside functions included)."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "vgrad_cli"
# Lowest first. A module may import modules of its own folder and of the layers below it; folders
# that share a layer do not import each other.
LAYERS = [
    {"errors", "vocab", "threads"},            # words and plain helpers, no torch at import
    {"activations", "kinds", "rundir"},        # registries; run directories on disk
    {"inits", "tasks", "measure"},             # the measurement engine
    {"config", "models"},                      # what a YAML file describes; vgrad's networks
    {"docgen", "analysis"},                    # verdict, indicators, theory
    {"report", "trackers"},                    # console, plots, compare, HTML; TensorBoard, W&B, MLflow sinks
    {"monitor"},                               # Monitor + Recording: one path from a step to the files
    {"integrations", "training"},              # frameworks' callbacks; `vgrad run`'s loop
    {"sweep"},
    {"story"},
    {"cli"},
    {"vgrad_cli", "__main__"},                 # the package's face and `python -m vgrad_cli`
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the vgrad_cli modules it imports, at any depth of its code (lazy imports too).
    `from pkg import name` is an import of pkg.name when that is a module, else of pkg."""
    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "vgrad_cli"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "vgrad_cli":
                    continue
                subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods}
                found |= subs or {target}
                if len(subs) < len(node.names):  # some names are attributes of target itself
                    found.add(target)
        graph[mod] = {m for m in found if m in mods and m != mod}
    return graph


def folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_folder_has_a_layer():
    assert {folder(m) for m in modules()} <= set(RANK), {folder(m) for m in modules()} - set(RANK)


def test_imports_run_down_the_layers():
    graph = imports(modules())
    upward = [f"{a} -> {b}" for a, bs in graph.items() for b in bs
              if folder(a) != folder(b) and RANK[folder(b)] >= RANK[folder(a)]]
    assert not upward, "imports up (or across) the layers:\n" + "\n".join(sorted(upward))


def test_monitor_does_not_import_training():
    graph = imports(modules())
    assert not [(a, b) for a, bs in graph.items() for b in bs if folder(a) == "monitor" and folder(b) == "training"]


def test_no_import_cycle():
    graph = imports(modules())
    # a cycle is a strongly connected component of more than one module (Tarjan)
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_past_400_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_column_lists_are_defined_only_in_the_vocabulary():
    """A list of three or more of vocab's column names outside vocab.py is a second definition
    that would drift."""
    from vgrad_cli import vocab

    columns = set(vocab.LAYER_COLUMNS + vocab.METRIC_COLUMNS + vocab.TIME_COLUMNS) - {"step", "layer", "name", "t"}
    found = []
    for mod, path in modules().items():
        if mod == "vgrad_cli.vocab":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.List, ast.Tuple)):
                names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in columns]
                if len(names) >= 3 and len(names) == len(node.elts):
                    found.append(f"{mod}:{node.lineno} {names}")
    assert not found, found
