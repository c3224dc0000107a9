"""The layout's import rules (docs/architecture.md), checked on the source with ``ast``.

- ``hal`` and ``models`` know nothing of ``sync``, ``gateway`` or ``receiver``;
- ``sync`` knows nothing of cameras, the daemon or the receiver;
- ``httpkit`` is plumbing and imports no package of ours;
- ``gateway`` never imports ``receiver``; ``receiver`` shares only the protocol (``sync``),
  ``httpkit`` and the pole's configuration models (``gateway.config``, ``gateway.configfile``, and
  ``gateway.remote_config``, what of them may change remotely) to validate remote configuration;
- only ``smartpole`` (the command and the demo) imports both the pole and the receiver;
- no package imports another's private names, and no module imports itself back in a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("smartpole", "httpkit", "gateway", "hal", "models", "sync", "receiver")

ALLOWED: dict[str, set[str]] = {
    "httpkit": set(),
    "hal": set(),
    "models": set(),
    "sync": {"httpkit"},
    "gateway": {"httpkit", "hal", "models", "sync"},
    "receiver": {"httpkit", "sync", "gateway.config", "gateway.configfile", "gateway.remote_config"},
    "smartpole": set(PACKAGES),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, nested ones too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module, [a.name for a in node.names], node.lineno


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _allowed(importer: str, module: str) -> bool:
    own = importer.split(".")[0]
    target = module.split(".")[0]
    if target == own:
        return True
    return any(module == rule or module.startswith(rule + ".") for rule in ALLOWED[own])


def test_packages_import_only_what_the_layout_allows() -> None:
    broken = []
    for path in _sources():
        importer = _module_name(path)
        for module, _, line in _imports(path):
            if _ours(module) and not _allowed(importer, module):
                broken.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {module}")
    assert not broken, "\n".join(broken)


def test_no_package_takes_another_packages_private_names() -> None:
    broken = []
    for path in _sources():
        importer = _module_name(path)
        for module, names, line in _imports(path):
            if not _ours(module) or module.split(".")[0] == importer.split(".")[0]:
                continue
            private = [n for n in names if n.startswith("_")] + [p for p in module.split(".") if p.startswith("_")]
            if private:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {importer} takes {private} from {module}")
    assert not broken, "\n".join(broken)


def _resolve(module: str, names: list[str], known: set[str]) -> set[str]:
    """The modules of ours an import statement loads: ``from pkg import mod`` loads ``pkg.mod``."""
    out = {module} if module in known else set()
    for name in names:
        if f"{module}.{name}" in known:
            out.add(f"{module}.{name}")
    return out


def test_no_import_cycles() -> None:
    paths = {_module_name(p): p for p in _sources()}
    known = set(paths)
    graph = {
        mod: {dep for module, names, _ in _imports(path) for dep in _resolve(module, names, known)} - {mod}
        for mod, path in paths.items()
    }
    # Packages' __init__ files hold only docstrings, so an edge into a package is not an edge into its modules.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep) :], dep] if dep in trail else [node, dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_rooms_carry_no_family_prefixes() -> None:
    """A family of modules lives in its own sub-package, not behind a file-name prefix."""
    prefixed = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "gateway").glob("*.py")
        if p.stem.split("_")[0] in {"vision", "sensor", "status", "camera", "http", "web"} and p.stem != "status"
    ]
    assert not prefixed, prefixed
