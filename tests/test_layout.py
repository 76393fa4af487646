"""The package's shape: imports run one way (no cycle, the dispatcher at the top imports no command), the report
loads neither torch nor Lightning, and the public surface resolves."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import resnet_repro
from resnet_repro.cli import COMMANDS, main

PACKAGE = Path(resnet_repro.__file__).parent
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """The package's modules that a file imports (at any depth of its code, lazy imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" for a in node.names} if node.module is None else {target}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnet_repro"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("resnet_repro")}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {target for target in found if target in modules and target != name}


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, name, target])}"
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_imports_of_the_package_form_no_cycle():
    graph = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}
    # a package's __init__ is imported with each of its modules: it counts as importing nothing of theirs
    graph = {name: {t for t in targets if not t.startswith(f"{name}.")} for name, targets in graph.items()}
    assert_no_cycle(graph)
    # nor do the subpackages, each taken as a whole (report -> tracking -> report.collect would be one)
    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    units: dict[str, set[str]] = {}
    for name, targets in graph.items():
        units.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))
    assert_no_cycle(units)
    # a command's module is imported by the dispatcher alone, when the command runs (`run` runs fits, and checks
    # an experiment's runs with the fit's own parser: the fit's module is the one a command may import)
    commands = {target.split(":")[0] for target in COMMANDS.values()} - {"resnet_repro.train"}
    assert len(commands) == 5 and not {name: targets & commands for name, targets in graph.items() if targets & commands}
    assert graph["resnet_repro.cli"] == {"resnet_repro.dependencies", "resnet_repro.errors"}  # after the versions check


def test_the_report_and_the_dispatcher_load_neither_torch_nor_lightning():
    heavy = ("torch", "lightning", "jsonargparse")
    # the report's tables and figures read the model registry, which sits beside the nets (torch)
    for module, allowed in (("resnet_repro.report.collect", ()), ("resnet_repro.rundir", ()), ("resnet_repro.cli", ()),
                            ("resnet_repro", ()), ("resnet_repro.report.write", ("torch",))):
        loaded = subprocess.run([sys.executable, "-c", f"import sys, {module}; print(' '.join(m for m in {heavy!r} "
                                 f"if m in sys.modules and m not in {allowed!r}))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert loaded == "", f"import {module} loads {loaded}"


def test_every_public_name_resolves_to_what_it_names():
    for name, module in resnet_repro.PUBLIC.items():
        assert getattr(resnet_repro, name).__module__ == f"resnet_repro.{module}"
    assert resnet_repro.build_model("resnet20").num_layers == 20


def test_an_unknown_command_is_refused_in_one_line_naming_the_valid_ones():
    with pytest.raises(SystemExit) as stop:
        main(["fly"])
    assert stop.value.code == f"resnet-repro: unknown command 'fly': valid commands are {', '.join(COMMANDS)}"
    assert list(COMMANDS) == ["fit", "validate", "test", "models", "run", "report", "responses", "bench"]


def test_the_results_index_lists_every_folder_of_results_and_a_command_that_exists():
    index = (REPO / "results" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.-]+)/` \| .* \| (.+) \|$", index, re.M))
    assert set(rows) == {p.name for p in (REPO / "results").iterdir() if p.is_dir()}
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    for folder, command in rows.items():
        target = re.fullmatch(r"`make ([\w-]+)`", command)
        assert (target and target[1] in targets) or (REPO / "results" / folder / "README.md").is_file(), folder


def test_the_committed_demo_notebooks_are_the_stored_ones_executed_with_their_figures():
    import nbformat

    for stored in sorted((REPO / "notebooks").glob("*.ipynb")):
        executed = nbformat.read(REPO / "results" / "demo-notebooks" / stored.name, as_version=4)
        source = nbformat.read(stored, as_version=4)
        assert [cell.source for cell in executed.cells] == [cell.source for cell in source.cells], stored.name
        code = [cell for cell in executed.cells if cell.cell_type == "code"]
        assert all(cell.execution_count for cell in code), f"{stored.name}: not every cell was executed"
        assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
        assert any("image/png" in o.get("data", {}) for cell in code for o in cell.outputs), stored.name
