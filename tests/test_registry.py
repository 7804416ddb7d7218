"""aevb.registry: every config choice resolves in one hop, names match conf/, and the schema
and the import graph stay light and acyclic; every module has its test file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aevb import registry
from aevb.errors import ConfigError

from .conftest import REPO

SRC = REPO / "src" / "aevb"
REGISTRIES = {
    name: value for name, value in vars(registry).items() if isinstance(value, registry.Registry)
}
#: config group folder -> the registry its files' `name` (or `architecture`/`algorithm`) picks
GROUPS = {
    "likelihood": ("name", registry.LIKELIHOODS),
    "data": ("name", registry.DATASETS),
    "optim": ("name", registry.OPTIMIZERS),
    "lr_schedule": ("name", registry.LR_SCHEDULES),
}


@pytest.mark.parametrize(("reg", "name"), [(r, n) for r in REGISTRIES.values() for n in r], ids=str)
def test_every_registered_name_resolves_to_a_callable(reg: registry.Registry, name: str) -> None:
    assert callable(reg[name])


@pytest.mark.parametrize("reg", REGISTRIES.values(), ids=lambda r: r.key)
def test_an_unknown_name_is_refused_naming_the_key_and_every_choice(
    reg: registry.Registry,
) -> None:
    with pytest.raises(ConfigError) as err:
        reg["no_such_choice"]
    assert str(err.value) == f"{reg.key} must be one of {sorted(reg)}, got 'no_such_choice'"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_config_option_names_a_registered_choice(group: str) -> None:
    key, reg = GROUPS[group]
    names = {yaml.safe_load(f.read_text())[key] for f in (REPO / "conf" / group).glob("*.yaml")}
    assert names <= set(reg), names - set(reg)


def test_config_schema_and_registry_load_without_torch_lightning_or_torchvision() -> None:
    code = (
        "import sys, aevb.config, aevb.registry, aevb.errors\n"
        "heavy = [m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules]\n"
        "assert 'aevb.likelihoods' in aevb.registry.LIKELIHOODS.entries['bernoulli']\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == ""


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """aevb modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "aevb":
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aevb."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("aevb.")}
    return found - {path.stem}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_cycle_finds_a_loop_and_accepts_a_tree() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_another_in_a_cycle() -> None:
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    graph = {m: imports_of(SRC / f"{m}.py", modules) for m in modules}
    assert graph["config"] <= {"errors", "registry"}
    assert graph["errors"] == set() and graph["registry"] == {"errors"}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


#: modules tested under another name: the light command line of aevb-train
TESTED_ELSEWHERE = {"train": "test_train_cli.py"}


def test_every_module_has_its_test_file() -> None:
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    tests = {p.name for p in (REPO / "tests").glob("test_*.py")}
    missing = {m for m in modules if TESTED_ELSEWHERE.get(m, f"test_{m}.py") not in tests}
    assert not missing, f"no tests/test_<module>.py for {sorted(missing)}"
