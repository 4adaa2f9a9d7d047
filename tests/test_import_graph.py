"""The first-party import graph: arrows point down, and no package has a cycle.

Every ``.py`` file git knows of (tracked, or untracked and not ignored) is
parsed with :mod:`ast`; nothing is imported. Every ``import`` statement
counts, at module level or inside a function (a function-level import only
postpones a cycle to the first call), except under ``if TYPE_CHECKING:``
(never executed).

**Modules.** ``a/b/c.py`` is module ``a.b.c``; ``a/b/__init__.py`` is ``a.b``.
The first-party packages are :data:`PACKAGES`. ``tests/`` is not a package:
pytest puts it on ``sys.path``, so a bare ``import diffusion_conftest`` in a
test is ``tests.diffusion_conftest``.

**Edges.** Relative imports are resolved against the importing module's
package. Then:

- ``import a.b.c`` is an edge to ``a.b.c``;
- ``from a.b import n`` is an edge to ``a.b.n`` when that is a module, else to
  ``a.b`` (``n`` is a name defined in ``a/b/__init__.py``); ``from a.b import *``
  is an edge to ``a.b``;
- importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so
  it is an edge to those packages too, *except* to the importing module's own
  parent packages: they are always initialised before the module itself, and
  a package ``__init__`` that re-exports its submodules would otherwise make
  every submodule a cycle. A module that *names* its parent package
  (``import a``, ``from a import name``, ``from . import name`` where ``name``
  is not a module) does get that edge: it reads names the ``__init__`` may not
  have defined yet;
- a name that is first-party but no module of the checkout maps to its
  longest existing prefix.

**Rules** (``docs/architecture.md``, "Import arrows"). (a) No arrow up
(:data:`FORBIDDEN`): ``common`` is the base, the diffusion service sits on it
and knows no Flower app, the apps do not import each other, and no package
imports the tools on top (``deploy``, ``benchmarks``, ``tests``). (b) No cycle
among the modules of any one package (strongly connected components of the
module graph, Tarjan's algorithm), reported with one cycle through the
component and the file and line of each of its imports.
"""

from __future__ import annotations

import ast
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = (
    "common",
    "diffusion_service",
    "client_app",
    "server_app",
    "deploy",
    "benchmarks",
    "tests",
)

_TOOLS = frozenset({"deploy", "benchmarks", "tests"})
FORBIDDEN: dict[str, frozenset[str]] = {
    "common": frozenset({"diffusion_service", "client_app", "server_app"}) | _TOOLS,
    "diffusion_service": frozenset({"client_app", "server_app"}) | _TOOLS,
    "client_app": frozenset({"server_app"}) | _TOOLS,
    "server_app": frozenset({"client_app"}) | _TOOLS,
}
"""Importing package -> the first-party packages it must not import."""

# The bare top-level module names that resolve inside tests/ (sys.path).
_PATH_DIRS = ("tests",)


@dataclass(frozen=True)
class Edge:
    """``source`` depends on ``target`` through the import at ``path``:``line``.

    ``imported`` is the module that import names (``target`` or a module inside
    it: the edges to the packages it runs on the way).
    """

    source: str
    target: str
    path: str
    line: int
    imported: str


def module_name(path: str) -> str | None:
    """``a/b/c.py`` -> ``a.b.c``, ``a/b/__init__.py`` -> ``a.b``; None if not first-party."""
    parts = Path(path).with_suffix("").parts
    if not parts or parts[0] not in PACKAGES:
        return None
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


class Graph:
    """The first-party import graph of a set of sources.

    Parameters
    ----------
    sources : dict of str to str
        Repository-relative path -> file text.
    """

    def __init__(self, sources: dict[str, str]) -> None:
        self.paths: dict[str, str] = {}
        self.packages: set[str] = set()
        trees = {}
        for path, text in sources.items():
            name = module_name(path)
            if name is None:
                continue
            self.paths[name] = path
            if Path(path).name == "__init__.py":
                self.packages.add(name)
            trees[name] = ast.parse(text, filename=path)
        self.modules = set(self.paths)
        self.edges: list[Edge] = []
        for name, tree in trees.items():
            for node in _imports(tree):
                for imported, target in self._targets(name, node):
                    if target != name:
                        self.edges.append(
                            Edge(name, target, self.paths[name], node.lineno, imported)
                        )

    # ------------------------------------------------------------ resolving
    def _known(self, name: str) -> str | None:
        """``name`` or its longest existing prefix if first-party, else None."""
        if name.split(".")[0] not in PACKAGES:
            return None
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in self.modules:
                return candidate
            parts.pop()
        return name.split(".")[0]  # a package without __init__ (tests)

    def _absolute(self, importer: str, name: str) -> str:
        """A bare name as Python's sys.path would find it for this importer."""
        top = name.split(".")[0]
        if top not in PACKAGES:
            for d in _PATH_DIRS:
                if importer.split(".")[0] == d and f"{d}.{top}" in self.modules:
                    return f"{d}.{name}"
        return name

    def _base(self, importer: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return self._absolute(importer, node.module or "")
        package = importer if importer in self.packages else importer.rpartition(".")[0]
        parts = package.split(".")
        if node.level > 1:
            parts = parts[: -(node.level - 1)]
        return ".".join([*parts, *([node.module] if node.module else [])])

    def _targets(
        self, importer: str, node: ast.Import | ast.ImportFrom
    ) -> set[tuple[str, str]]:
        """(imported module, dependency) pairs of one import statement."""
        named: set[str] = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                named.add(self._absolute(importer, alias.name))
        else:
            base = self._base(importer, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                named.add(sub if alias.name != "*" and sub in self.modules else base)
        own_parents = _ancestors(importer)
        out: set[tuple[str, str]] = set()
        for name in named:
            target = self._known(name)
            if target is None:
                continue
            out.add((target, target))  # named: even the importer's own parent
            out.update((target, a) for a in _ancestors(target) if a not in own_parents)
        return out

    # --------------------------------------------------------------- checks
    def up_arrows(self) -> list[str]:
        """Imports that point up the layering, one message each."""
        bad = set()
        for e in self.edges:
            src, dst = e.source.split(".")[0], e.imported.split(".")[0]
            if dst in FORBIDDEN.get(src, ()):
                bad.add(
                    f"{e.path}:{e.line}: {src} imports {e.imported} "
                    f"({dst} is above {src})"
                )
        return sorted(bad)

    def cycles(self) -> list[str]:
        """One message per import cycle among the modules of one package."""
        succ: dict[str, dict[str, Edge]] = {m: {} for m in self.modules}
        for e in self.edges:
            same = e.source.split(".")[0] == e.target.split(".")[0]
            if same and e.target in succ:
                succ[e.source].setdefault(e.target, e)
        out = []
        for scc in _sccs(succ):
            if len(scc) < 2:
                continue
            path = _cycle_in(scc, succ)
            steps = [
                f"  {succ[a][b].path}:{succ[a][b].line}: {a} -> {b}"
                for a, b in zip(path, path[1:], strict=False)
            ]
            out.append(
                f"import cycle among {', '.join(sorted(scc))}:\n" + "\n".join(steps)
            )
        return sorted(out)


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _sccs(succ: dict[str, dict[str, Edge]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(sorted(succ[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        scc.add(w)
                        if w == v:
                            break
                    out.append(scc)
    return out


def _cycle_in(scc: set[str], succ: dict[str, dict[str, Edge]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first)."""
    start = min(scc)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(succ[v]):
                if w not in scc:
                    continue
                if w == start:
                    return _unwind(parent, start, v)
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(scc)} is not a cycle")  # pragma: no cover


def _unwind(parent: dict[str, str], start: str, last: str) -> list[str]:
    path = [last]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return [*reversed(path), start]


def repository_sources() -> dict[str, str]:
    """Path -> text of every first-party ``.py`` file git tracks or would track."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        f: (ROOT / f).read_text(encoding="utf-8")
        for f in sorted(set(files))
        if module_name(f) is not None and (ROOT / f).is_file()
    }


@pytest.fixture(scope="module")
def graph() -> Graph:
    try:
        sources = repository_sources()
    except (OSError, subprocess.CalledProcessError) as exc:  # pragma: no cover
        pytest.skip(f"not a git checkout: {exc}")
    return Graph(sources)


def test_no_arrow_points_up(graph):
    bad = graph.up_arrows()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle_inside_a_package(graph):
    bad = graph.cycles()
    assert not bad, "\n".join(bad)


def test_the_graph_sees_the_repository(graph):
    # Guard against a checker that passes because it found nothing.
    assert {
        "common.io",
        "diffusion_service.features",
        "server_app.app",
    } <= graph.modules
    assert any(
        e.source == "diffusion_service.extract"
        and e.target == "diffusion_service.features"
        for e in graph.edges
    )


# ------------------------------------------------------------- self-tests
SYNTHETIC = {
    "common/__init__.py": "",
    "common/base.py": "def f():\n    from server_app.app import main\n",
    "diffusion_service/__init__.py": "from .a import A\nfrom .b import B\n",
    "diffusion_service/a.py": "from .b import B\n",
    "diffusion_service/b.py": "def g():\n    from diffusion_service.a import A\n",
    "diffusion_service/c.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from server_app.app import main\n"
        "from . import a\n"
    ),
    "server_app/__init__.py": "",
    "server_app/app.py": "import common.base\n",
}


def test_checker_catches_an_up_arrow():
    bad = Graph(SYNTHETIC).up_arrows()
    assert bad == [
        "common/base.py:2: common imports server_app.app (server_app is above common)"
    ]  # and not the TYPE_CHECKING import of diffusion_service/c.py


def test_checker_catches_a_cycle_through_a_function_level_import():
    bad = Graph(SYNTHETIC).cycles()
    assert len(bad) == 1
    assert bad[0].startswith(
        "import cycle among diffusion_service.a, diffusion_service.b:"
    )
    assert (
        "diffusion_service/a.py:1: diffusion_service.a -> diffusion_service.b" in bad[0]
    )
    assert (
        "diffusion_service/b.py:2: diffusion_service.b -> diffusion_service.a" in bad[0]
    )


def test_checker_edge_rules():
    g = Graph(
        {
            "pkg_none/x.py": "",  # not first-party: ignored
            "diffusion_service/__init__.py": "from .remote import R\n",
            "diffusion_service/core.py": "from diffusion_service.remote.io import x\n",
            "diffusion_service/remote/__init__.py": "from .io import R\n",
            "diffusion_service/remote/io.py": (
                "from . import helpers\nfrom diffusion_service.core import y\n"
            ),
            "diffusion_service/remote/helpers.py": "from . import R\n",
            "tests/test_a.py": "from diffusion_conftest import tiny\n",
            "tests/diffusion_conftest.py": "import diffusion_service\n",
        }
    )
    edges = {(e.source, e.target) for e in g.edges}
    ds = "diffusion_service"
    # An import of a.b.c runs a/b/__init__: an edge to the package too ...
    assert (f"{ds}.core", f"{ds}.remote.io") in edges
    assert (f"{ds}.core", f"{ds}.remote") in edges
    # ... but not back to the importer's own parents, unless it names them.
    assert (f"{ds}.remote.io", f"{ds}.remote") not in edges
    assert (f"{ds}.remote.io", ds) not in edges
    assert (f"{ds}.remote.io", f"{ds}.remote.helpers") in edges
    assert (f"{ds}.remote.helpers", f"{ds}.remote") in edges  # names it
    assert ("tests.test_a", "tests.diffusion_conftest") in edges
    assert ("tests.diffusion_conftest", ds) in edges
    cycles = g.cycles()
    # core <-> remote.io, and remote -> io -> helpers -> remote (names its parent).
    assert len(cycles) == 1
    members = ", ".join(
        f"{ds}.{m}" for m in ("core", "remote", "remote.helpers", "remote.io")
    )
    assert cycles[0].splitlines()[0] == f"import cycle among {members}:"
