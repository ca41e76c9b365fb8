"""The package's import graph, read from the source (ast): no cycle, a torch-only sampler core, an env that
knows nothing of pcm_policy, task packages that do not import each other (docs: design.md, "Layout")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pcm_policy"
TASKS = ("pusht", "vision", "lerobot")
STDLIB = sys.stdlib_module_names
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()  # none left


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(pkg: Path = PKG) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(pkg.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str] = frozenset()) -> set[str]:
    """Absolute names of every module ``path`` imports, at module level or inside functions alike.

    ``from pkg import a, b`` gives ``pkg.a`` / ``pkg.b`` where those are modules of ``known``, and ``pkg``
    itself (its ``__init__`` runs the import) where one of the names is not: an attribute of the package."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - (node.level - 1)]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module
            subs = {f"{mod}.{a.name}" for a in node.names}
            out |= subs & set(known)
            if not subs <= set(known):
                out.add(mod)
    return out


def graph() -> dict[str, set[str]]:
    """Edges between pcm_policy modules (a package's ``__init__`` is the node of the package)."""
    mods = modules()
    return {name: {m for m in imports(path, name, set(mods)) if m in mods and m != name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    edges = graph()
    for a, b in KNOWN_CYCLE_EDGES:
        edges.get(a, set()).discard(b)
    assert cycles(edges) == []


def test_sampling_imports_torch_and_the_standard_library_only():
    for name, path in modules(PKG / "sampling").items():
        outside = {m for m in imports(path, name) if not m.startswith("pcm_policy.sampling")}
        bad = {m for m in outside if m.split(".")[0] not in STDLIB and m.split(".")[0] != "torch"}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_envs_import_nothing_of_pcm_policy():
    for path in sorted((ROOT / "envs").rglob("*.py")):
        name = module_name(path)
        assert not {m for m in imports(path, name) if m.split(".")[0] == "pcm_policy"}, name


def test_no_task_package_imports_another_and_the_core_imports_none():
    for name, path in modules().items():
        own = name.split(".")[1] if name.count(".") >= 1 else None
        tasks = {m.split(".")[1] for m in imports(path, name)
                 if m.startswith("pcm_policy.") and m.split(".")[1] in TASKS}
        assert tasks <= ({own} if own in TASKS else set()), f"{name} imports the task package(s) {sorted(tasks)}"


@pytest.mark.slow
def test_importing_sampling_loads_no_model_env_or_config_library():
    code = ("import sys, pcm_policy.sampling; print(sorted(m for m in ('peft', 'diffusers', 'transformers', "
            "'hydra', 'omegaconf', 'gymnasium', 'envs', 'pcm_policy.lora', 'pcm_policy.pusht', 'pcm_policy.vision') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
