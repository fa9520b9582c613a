"""Imports run one way: no cycle, and no module imports one from a higher layer.

The graph is read from the source with ``ast`` (nothing is imported): every
``import`` and ``from ... import`` of the project's own modules, at module
level and inside functions alike, in transformer/ (with transformer/data/),
the root train.py and evaluate.py, benchmarks/*.py and configs/*.py. An edge
goes to the module named: ``from transformer import data`` to the package
``transformer.data``, ``from transformer.data import packing`` to
``transformer.data.packing``, ``from transformer.tokens import PAD_ID`` to
``transformer.tokens``; a package's ``__init__`` is not counted as imported by
its submodules (Python runs it first, but it is not a dependency anyone wrote).
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

# transformer's modules, lowest layer first. A module may import modules of
# its own layer and of lower ones, never of a higher one. Every module of
# transformer/ is in exactly one layer: a new module needs a line here.
LAYERS = (
    # Import nothing of the project: token ids, atomic files, processes, mesh
    # rules, dtypes, Orbax's logs, the metrics file, the optimiser, BLEU, plots,
    # where the planner's toolchain lives, the names of the swappable parts, what a
    # compiled program holds (training checks its memory with it).
    ("leaves", ("transformer", "transformer.tokens", "transformer.atomic", "transformer.choices",
                "transformer.multihost", "transformer.orbax_logs", "transformer.sharding",
                "transformer.precision", "transformer.metrics", "transformer.optim",
                "transformer.bleu", "transformer.plot", "transformer.toolchain",
                "transformer.compiled")),
    # The input pipeline, text to token batches: knows nothing of the model.
    ("data", ("transformer.data", "transformer.data.synthetic", "transformer.data.sources",
              "transformer.data.encode_worker", "transformer.data.packing",
              "transformer.data.token_cache", "transformer.data.tokenizer",
              "transformer.data.train_iterator")),
    # The config's fields (one table), its checks before any work, its file
    # I/O and the command lines' flags and exit codes: they may look at the
    # data's sources, the dtypes and the mesh, but not at the model they guard.
    ("config checks", ("transformer.fields", "transformer.checks", "transformer.config_io",
                       "transformer.cli")),
    # Figure 1 and the training objective (§3, §5.4).
    ("model", ("transformer.model", "transformer.loss")),
    # Each needs the model and none needs training: decoding, checkpoints,
    # the parameter summary.
    ("model users", ("transformer.search", "transformer.checkpoint", "transformer.summary")),
    # Translating (one engine interface: JAX or CTranslate2) and scoring a trained model.
    ("evaluation", ("transformer.evaluate", "transformer.export")),
    # The train state, the update step and the loop.
    ("training", ("transformer.train",)),
    # The planner CLI compiles training's real step for absent devices: it
    # imports train, train never imports it (MaxText's train_compile.py).
    ("planner CLI", ("transformer.plan",)),
)

# Entry points: they import transformer/, nothing of the project imports them.
ROOT_CLIS = ("train", "evaluate")


def _modules():
  """{module name: path} for every file the graph covers."""
  paths = [*sorted((REPO / "transformer").rglob("*.py")),
           *sorted((REPO / "benchmarks").glob("*.py")),
           *sorted((REPO / "configs").glob("*.py")),
           REPO / "train.py", REPO / "evaluate.py"]
  modules = {}
  for path in paths:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    modules[".".join(parts)] = path
  return modules


MODULES = _modules()


def _project_module(name):
  """The longest prefix of a dotted name that is one of ours, or None."""
  while name:
    if name in MODULES:
      return name
    name = name.rpartition(".")[0]
  return None


def _imported(module, node):
  """The project modules one import statement names."""
  if isinstance(node, ast.Import):
    return [_project_module(alias.name) for alias in node.names]
  if node.level:  # Relative: from the module's own package upwards.
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
      package = package[:-1]
    package = package[:len(package) - node.level + 1]
    base = ".".join(package + ([node.module] if node.module else []))
  else:
    base = node.module
  # `from package import name`: the submodule if there is one, else the package.
  return [_project_module(f"{base}.{alias.name}") if f"{base}.{alias.name}" in MODULES
          else _project_module(base) for alias in node.names]


def _graph():
  """{importer: {imported: line of the first import}}, function-level imports included."""
  graph = {module: {} for module in MODULES}
  for module, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in _imported(module, node):
          if target is not None and target != module:
            graph[module].setdefault(target, node.lineno)
  return graph


GRAPH = _graph()


def _where(importer, imported):
  path = MODULES[importer].relative_to(REPO)
  return f"{importer} -> {imported} ({path}:{GRAPH[importer][imported]})"


def _cycles():
  """Each strongly connected component of more than one module (Tarjan)."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for target in GRAPH[module]:
      if target not in index:
        visit(target)
        low[module] = min(low[module], low[target])
      elif target in on_stack:
        low[module] = min(low[module], index[target])
    if low[module] == index[module]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == module:
          break
      if len(component) > 1:
        components.append(sorted(component))

  for module in sorted(GRAPH):
    if module not in index:
      visit(module)
  return components


def _one_cycle(component):
  """A shortest closed path through the component's first module, as import edges."""
  members, start = set(component), component[0]
  previous, frontier = {start: None}, [start]
  while frontier:  # Breadth first from `start` until an edge leads back to it.
    following = []
    for module in frontier:
      for target in sorted(GRAPH[module]):
        if target == start:
          path = [start]
          while module is not None:  # Back along the search to `start`.
            path.insert(0, module)
            module = previous[module]
          return [_where(a, b) for a, b in zip(path, path[1:], strict=False)]
        if target in members and target not in previous:
          previous[target] = module
          following.append(target)
    frontier = following
  raise AssertionError(f"no cycle through {start}")


def _transformer_imports(module):
  """{transformer module: the import that brings it}, seeing through configs/ modules
  (a config module that imports transformer/ lends that import to its importer)."""
  found = {}
  for direct in GRAPH[module]:
    seen, todo = set(), [direct]
    while todo:
      target = todo.pop()
      if target in seen:
        continue
      seen.add(target)
      if target.split(".")[0] == "transformer":
        found.setdefault(target, _where(module, direct))
      elif target.split(".")[0] == "configs":
        todo.extend(GRAPH[target])
  return found


def test_graph_covers_the_project():
  # The walk found the files it should (a moved folder would empty the graph).
  assert {"transformer.train", "transformer.model", "transformer.data.packing", "train",
          "evaluate", "configs.common", "benchmarks.benchmark"} <= set(MODULES)
  assert "transformer.model" in GRAPH["transformer.train"]


def test_no_import_cycle():
  cycles = [f"  modules {component}, for one: " + "; ".join(_one_cycle(component))
            for component in _cycles()]
  assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(cycles)


def test_layers_name_every_module_once():
  declared = [module for _, modules in LAYERS for module in modules]
  repeated = sorted({module for module in declared if declared.count(module) > 1})
  assert not repeated, f"in more than one layer of LAYERS: {repeated}"
  ours = {module for module in MODULES if module.split(".")[0] == "transformer"}
  unplaced = sorted(ours - set(declared))
  missing = sorted(set(declared) - ours)
  assert not unplaced and not missing, (
      f"transformer modules in no layer of LAYERS (add each to its layer): {unplaced}; "
      f"LAYERS names modules that have no file: {missing}")


def test_no_import_from_a_higher_layer():
  layer_of = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}
  upward = []
  for module in sorted(set(layer_of) & set(GRAPH)):
    for target, where in sorted(_transformer_imports(module).items()):
      if layer_of.get(target, -1) > layer_of[module]:
        upward.append(f"{where}: layer '{LAYERS[layer_of[module]][0]}' imports "
                      f"{target} of layer '{LAYERS[layer_of[target]][0]}'")
  assert not upward, "imports from a lower layer to a higher one:\n  " + "\n  ".join(upward)


def _path(source, destination):
  """The import edges of a shortest path from one module to another, or []."""
  previous, frontier = {source: None}, [source]
  while frontier and destination not in previous:  # Breadth first.
    following = []
    for module in frontier:
      for target in sorted(GRAPH[module]):
        if target not in previous:
          previous[target] = module
          following.append(target)
    frontier = following
  if destination not in previous:
    return []
  path = [destination]
  while previous[path[0]] is not None:
    path.insert(0, previous[path[0]])
  return [_where(a, b) for a, b in zip(path, path[1:], strict=False)]


def test_train_never_imports_the_planner():
  path = _path("transformer.train", "transformer.plan")
  assert not path, "transformer.train reaches transformer.plan: " + "; ".join(path)


def test_entry_points_are_imported_by_nothing_of_the_package():
  # The root CLIs and benchmarks/ import transformer/; nothing in transformer/
  # or configs/ imports them, and nothing at all imports a root CLI.
  wrong = []
  for module in sorted(GRAPH):
    for target in sorted(GRAPH[module]):
      package_imports_benchmarks = (target.split(".")[0] == "benchmarks"
                                    and module.split(".")[0] in ("transformer", "configs"))
      if target in ROOT_CLIS or package_imports_benchmarks:
        wrong.append(_where(module, target))
  assert not wrong, "imports of an entry point:\n  " + "\n  ".join(wrong)


SYS_PATH_EDITS = {"append", "insert", "extend", "remove", "pop", "clear", "sort", "reverse",
                  "__setitem__", "__delitem__", "__iadd__"}


def _is_main_guard(test):
  """``__name__ == "__main__"``."""
  return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
          and test.left.id == "__name__" and len(test.ops) == 1
          and isinstance(test.ops[0], ast.Eq) and isinstance(test.comparators[0], ast.Constant)
          and test.comparators[0].value == "__main__")


def _import_time_statements(body):
  """The statements that run when a module is imported: everything but function
  bodies and the ``if __name__ == "__main__":`` block."""
  for node in body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    if isinstance(node, ast.If) and _is_main_guard(node.test):
      yield from _import_time_statements(node.orelse)
      continue
    yield node
    for field in ("body", "orelse", "finalbody"):  # if, for, while, with, try, class
      yield from _import_time_statements(getattr(node, field, []))
    for handler in getattr(node, "handlers", []):  # except
      yield from _import_time_statements(handler.body)
    for case in getattr(node, "cases", []):  # match
      yield from _import_time_statements(case.body)


def _is_sys_path(node):
  return (isinstance(node, ast.Attribute) and node.attr == "path"
          and isinstance(node.value, ast.Name) and node.value.id == "sys")


def _edits_sys_path(statement):
  """Whether the statement's own expressions (not its nested statements, not a
  lambda) edit sys.path: a mutating method, an assignment, site.addsitedir."""
  if isinstance(statement, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
    targets = getattr(statement, "targets", None) or [statement.target]
    if any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value))
           for t in targets):
      return True
  todo = [child for child in ast.iter_child_nodes(statement) if not isinstance(child, ast.stmt)]
  while todo:
    node = todo.pop()
    if isinstance(node, ast.Lambda):
      continue
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      owner, method = node.func.value, node.func.attr
      if _is_sys_path(owner) and method in SYS_PATH_EDITS:
        return True
      if method == "addsitedir" and isinstance(owner, ast.Name) and owner.id == "site":
        return True
    todo.extend(ast.iter_child_nodes(node))
  return False


def _dotted(node):
  """``a.b.c`` of a Name/Attribute chain, or None."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    owner = _dotted(node.value)
    return owner and f"{owner}.{node.attr}"
  return None


def _aliases(module, tree):
  """{local name: dotted name it stands for}, from the file's import statements."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.asname:
          aliases[alias.asname] = alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
  return aliases


def _called(module, aliases, call):
  """The dotted name a call resolves to: through the import aliases, else this module's."""
  name = _dotted(call.func)
  if name is None:
    return None
  head, _, rest = name.partition(".")
  if head in aliases:
    return aliases[head] + (f".{rest}" if rest else "")
  return name if rest else f"{module}.{name}"


def _trees():
  return {module: ast.parse(path.read_text(), filename=str(path))
          for module, path in MODULES.items() if module.split(".")[0] == "transformer"}


def test_no_module_changes_sys_path_on_import():
  trees = _trees()
  # Functions of the package that edit sys.path (the planner's toolchain.use):
  # calling one when a module is imported is editing it on import too.
  editors = {f"{module}.{node.name}" for module, tree in trees.items() for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and any(_edits_sys_path(s) for s in ast.walk(node) if isinstance(s, ast.stmt))}
  edits = []
  for module, tree in sorted(trees.items()):
    aliases = _aliases(module, tree)
    where = MODULES[module].relative_to(REPO)
    for statement in _import_time_statements(tree.body):
      own = [n for n in ast.iter_child_nodes(statement) if not isinstance(n, ast.stmt)]
      calls = [n for child in own for n in ast.walk(child) if isinstance(n, ast.Call)]
      if _edits_sys_path(statement):
        edits.append(f"{where}:{statement.lineno}")
      edits += [f"{where}:{statement.lineno} ({_called(module, aliases, c)})" for c in calls
                if _called(module, aliases, c) in editors]
  assert not edits, ("sys.path changed when the module is imported (set the path where the "
                     f"command starts instead): {edits}")
