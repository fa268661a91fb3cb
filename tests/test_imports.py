"""The package's import graph: acyclic, with every dermjax import at module level.

An import inside a function hides a cycle from the reader (and from this test's first
half); a lazy import of an optional heavy third-party dependency (torch, matplotlib) is
fine, so only imports of dermjax modules are checked for placement.
"""

import ast
import graphlib
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(repo=REPO):
  """{dotted module name: path} of every dermjax module (packages by their __init__)."""
  out = {}
  for directory, _, files in os.walk(os.path.join(repo, "dermjax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, repo)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def _targets(node, module, path, modules):
  """The dermjax modules an Import / ImportFrom node imports (a name imported from a
  package counts as its submodule when there is one)."""
  if isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  else:
    base = node.module or ""
    if node.level:
      package = module.split(".")
      if not path.endswith("__init__.py"):
        package = package[:-1]
      package = package[:len(package) - node.level + 1]
      base = ".".join(package + ([base] if base else []))
    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
  out = set()
  for name in names:
    while name not in modules and "." in name:
      name = name.rsplit(".", 1)[0]
    if name in modules:
      out.add(name)
  return out


def import_graph(repo=REPO):
  """({module: set of dermjax modules it imports}, [(module, line, target) imported inside a
  function or class body])."""
  modules = _modules(repo)
  graph, nested = {}, []
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    top = {id(n) for n in tree.body}
    graph[module] = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        targets = _targets(node, module, path, modules) - {module}
        graph[module] |= targets
        if id(node) not in top:
          nested += [(module, node.lineno, t) for t in sorted(targets)]
  return graph, nested


def test_no_dermjax_import_inside_a_function():
  _, nested = import_graph()
  assert not nested, f"dermjax modules imported inside functions: {nested}"


def test_import_graph_is_acyclic():
  graph, _ = import_graph()
  try:
    tuple(graphlib.TopologicalSorter(graph).static_order())
  except graphlib.CycleError as e:
    pytest.fail(f"import cycle between dermjax modules: {e.args[1]}")


def test_the_checks_see_a_hidden_cycle(tmp_path):
  """The graph counts imports inside functions, so a cycle hidden there is found."""
  package = tmp_path / "dermjax"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("from dermjax import b\n")
  (package / "b.py").write_text("def f():\n  from dermjax import a\n  return a\n")
  graph, nested = import_graph(str(tmp_path))
  assert nested == [("dermjax.b", 2, "dermjax.a")]
  with pytest.raises(graphlib.CycleError):
    tuple(graphlib.TopologicalSorter(graph).static_order())
