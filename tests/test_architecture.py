"""The package's import structure: no cycles, layers that read top-down, diffusion math free of
model code, and no project imports hidden inside functions (DESIGN.md, "Layers").

grimp builds the import graph from the source (nothing is imported or run).
"""

import ast
import os

import grimp
import pytest

from conftest import REPO_ROOT

PACKAGE = "diffusion_lm"
# Top to bottom; a module may import from its own layer and the layers below it, never above.
LAYERS = (
    ("binaries", {"train", "sample", "evaluate", "train_classifier"}),
    ("binary plumbing", {"cli"}),
    ("inference API and trainer library", {"pipeline", "trainer", "evaluation", "classifier_trainer",
                                           "distillation"}),
    ("workdir and train state", {"workdir", "train_state"}),
    ("config checks", {"config_utils"}),
    ("model kinds", {"kinds"}),
    ("inference parts", {"diffusion_pipeline", "masked_pipeline", "decoding", "semantic_classifier", "scoring", "control",
                         "text_metrics"}),
    ("models, diffusion math, data, checkpointing", {"models", "diffusion", "data", "checkpoint", "preemption",
                                                     "parallel", "axes", "lock", "numerics", "metrics", "flops"}),
    ("errors", {"errors"}),
)
# The one function-level project import, and why: `import diffusion_lm` (which every
# `python -m diffusion_lm.<binary>` runs first) must not pull in jax and the models.
ALLOWED_FUNCTION_IMPORTS = {("diffusion_lm/__init__.py", "load")}


@pytest.fixture(scope="module")
def graph():
  return grimp.build_graph(PACKAGE, include_external_packages=False)


def top_level(module: str) -> str:
  """diffusion_lm.kinds.diffusion → kinds (the package root maps to itself)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else PACKAGE


def layer_of(module: str) -> int:
  name = top_level(module)
  if name == PACKAGE:
    return -1  # The package root (diffusion_lm.load) sits above everything.
  for index, (_, members) in enumerate(LAYERS):
    if name in members:
      return index
  raise AssertionError(f"{module} is in no layer of tests/test_architecture.py; add it to one")


def test_every_module_has_a_layer(graph):
  for module in graph.modules:
    layer_of(module)


def upward_imports(graph) -> list[str]:
  upward = []
  for importer in sorted(graph.modules):
    if importer == PACKAGE:
      continue
    for imported in graph.find_modules_directly_imported_by(importer):
      if layer_of(imported) < layer_of(importer):
        upward.append(f"{importer} ({LAYERS[layer_of(importer)][0]}) imports {imported} "
                      f"({LAYERS[layer_of(imported)][0]})")
  return upward


def import_cycles(graph) -> list[list[str]]:
  """Tarjan's strongly connected components of more than one module."""
  index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

  def visit(module):
    index[module] = low[module] = counter[0]
    counter[0] += 1
    stack.append(module)
    on_stack.add(module)
    for imported in graph.find_modules_directly_imported_by(module):
      if imported not in index:
        visit(imported)
        low[module] = min(low[module], low[imported])
      elif imported in on_stack:
        low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == module:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for module in sorted(graph.modules):
    if module not in index:
      visit(module)
  return cycles


def test_no_import_goes_up_a_layer(graph):
  assert not upward_imports(graph), "\n".join(upward_imports(graph))


def test_no_import_cycles(graph):
  assert not import_cycles(graph)


def test_diffusion_math_imports_no_model_code(graph):
  chain = graph.find_shortest_chain(importer=f"{PACKAGE}.diffusion", imported=f"{PACKAGE}.models",
                                    as_packages=True)
  assert chain is None, f"diffusion math reaches model code: {' -> '.join(chain)}"


def test_no_project_imports_inside_functions():
  found = []
  for root, _, names in os.walk(os.path.join(REPO_ROOT, PACKAGE)):
    for name in sorted(n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      relative = os.path.relpath(path, REPO_ROOT)
      tree = ast.parse(open(path, encoding="utf-8").read())
      for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
          continue
        for node in ast.walk(function):
          modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
          if any(m.split(".")[0] in (PACKAGE, "configs") for m in modules) and \
              (relative, function.name) not in ALLOWED_FUNCTION_IMPORTS:
            found.append(f"{relative}:{node.lineno} in {function.name}()")
  assert not found, "project imports inside functions:\n" + "\n".join(found)


def test_the_checks_can_fail():
  """An import from the bottom layer back up to the trainer is both upward and a cycle."""
  broken = grimp.build_graph(PACKAGE, include_external_packages=False)
  broken.add_import(importer=f"{PACKAGE}.errors", imported=f"{PACKAGE}.trainer")
  assert upward_imports(broken) == [f"{PACKAGE}.errors (errors) imports {PACKAGE}.trainer "
                                    "(inference API and trainer library)"]
  assert any(f"{PACKAGE}.errors" in cycle and f"{PACKAGE}.trainer" in cycle for cycle in import_cycles(broken))
