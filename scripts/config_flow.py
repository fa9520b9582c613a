"""Follow `config` from transformer/train.py's train_and_evaluate through the
calls that pass it on; count files entered, moves between files, and returns.

  python scripts/config_flow.py <repo_root> [--edges] [--json]

Method (static, `ast`, nothing of the project is imported except, optionally,
configs/common.py to learn which attributes of a config are sections):

* Start: train_and_evaluate(config, ...) in transformer/train.py, its parameter
  `config` bound to the whole config (path "").
* Config values in a function body: the parameters that received one, and
  names assigned from one (`t = config.train`, `cfg = config.model`,
  `x = config.model.copy_and_resolve_references()`). A config value is the
  whole config or a section of it (config.model, config.data, config.train,
  config.decode, config.train.mesh_shape, ...); a leaf field (config.data.
  dev_split, t.num_steps) is not.
* A call passes config on when one of its arguments (positional or keyword)
  is a config value. The whole function body is searched, nested defs and
  lambdas included (`lambda: data_lib.load_tokenizer(config.data, ...)`);
  `functools.partial(f, config...)` counts as a call of f.
* The callee is resolved to a function of the project: same-module function,
  `alias.function` through the module's imports (module-level and
  function-level, re-exports followed: `data_lib.load_tokenizer` is
  transformer/data/tokenizer.py's), a class (its __init__, or the class itself
  for a dataclass), `self.method`, and `x.method` where x was assigned from a
  project class's constructor in the same function. Calls that cannot be
  resolved this way (methods of objects of unknown type, callables stored in
  attributes) are not followed; config carried inside objects (TrainSetup's
  train section) is not followed either.
* The callee's parameter that received the value (by position, skipping self,
  or by keyword) becomes a config value there, and the traversal recurses,
  depth first, call sites in source order; each (function, set of config
  parameters) is explored once.

Counts:
  files  distinct files holding a function the traversal entered (start
         included; a dataclass counts as entered where it is defined).
  moves  distinct call edges (call site -> callee) whose caller and callee are
         in different files.
  back   moves to a file that the traversal had already entered before that
         move (a return to a file; depth-first order as above).
"""

import ast
import json
import pathlib
import subprocess
import sys

STATIC_SECTIONS = {"model", "data", "train", "decode", "train.mesh_shape"}
CONFIG_METHODS_RETURNING_CONFIG = {"copy_and_resolve_references", "copy", "lock", "unlock"}


def sections_of(root):
  """Attribute paths of the config that are ConfigDicts: from configs/common.py if it
  loads (in a subprocess), else the static set; the union of both."""
  code = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import ml_collections
from configs import common
make = getattr(common, "get_base_config", None) or getattr(common, "get_config")
out = []
def walk(c, p):
  for k in c.keys():
    v = c[k]
    if isinstance(v, ml_collections.ConfigDict):
      out.append(p + k); walk(v, p + k + ".")
walk(make(), "")
print(json.dumps(out))
"""
  try:
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                            text=True, timeout=120, check=True)
    return STATIC_SECTIONS | set(json.loads(result.stdout.strip().splitlines()[-1])), "loaded"
  except Exception as e:  # noqa: BLE001
    return set(STATIC_SECTIONS), f"static ({type(e).__name__})"


class Project:
  def __init__(self, root):
    self.root = pathlib.Path(root).resolve()
    paths = [*sorted((self.root / "transformer").rglob("*.py")),
             *sorted((self.root / "benchmarks").glob("*.py")),
             *sorted((self.root / "configs").glob("*.py"))]
    paths += [self.root / n for n in ("train.py", "evaluate.py") if (self.root / n).exists()]
    self.paths, self.trees = {}, {}
    for path in paths:
      parts = path.relative_to(self.root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      name = ".".join(parts)
      self.paths[name] = path
      self.trees[name] = ast.parse(path.read_text(), filename=str(path))
    self.defs = {m: self._defs(t) for m, t in self.trees.items()}
    self.aliases = {m: self._aliases(m, t) for m, t in self.trees.items()}

  @staticmethod
  def _defs(tree):
    """{name: node} of top-level functions and classes; {Class.method: node} too."""
    defs = {}
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        defs[node.name] = node
        if isinstance(node, ast.ClassDef):
          for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
              defs[f"{node.name}.{item.name}"] = item
    return defs

  def _aliases(self, module, tree):
    """{local name: ("module", modname) or ("symbol", modname, name)}."""
    aliases = {}
    is_pkg = self.paths[module].name == "__init__.py"
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.asname and a.name in self.paths:
            aliases[a.asname] = ("module", a.name)
          elif not a.asname and a.name.split(".")[0] in ("transformer", "configs"):
            aliases[a.name.split(".")[0]] = ("module", a.name.split(".")[0])
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          pkg = module.split(".") if is_pkg else module.split(".")[:-1]
          pkg = pkg[:len(pkg) - node.level + 1]
          base = ".".join(pkg + ([node.module] if node.module else []))
        else:
          base = node.module
        for a in node.names:
          local = a.asname or a.name
          if f"{base}.{a.name}" in self.paths:
            aliases[local] = ("module", f"{base}.{a.name}")
          elif base in self.paths:
            aliases[local] = ("symbol", base, a.name)
    return aliases

  def symbol(self, module, name, depth=0):
    """(module, qualified name, node) of a name defined in or re-exported by module."""
    if depth > 10 or module not in self.defs:
      return None
    if name in self.defs[module]:
      return module, name, self.defs[module][name]
    alias = self.aliases[module].get(name)
    if alias and alias[0] == "symbol":
      return self.symbol(alias[1], alias[2], depth + 1)
    return None

  def resolve(self, module, func, local_types, class_name):
    """The project function or class a call's func expression names, or None."""
    if isinstance(func, ast.Name):
      if func.id in self.defs[module]:
        return self.symbol(module, func.id)
      alias = self.aliases[module].get(func.id)
      if alias and alias[0] == "symbol":
        return self.symbol(alias[1], alias[2])
      return None
    if isinstance(func, ast.Attribute):
      owner = func.value
      if isinstance(owner, ast.Name):
        if owner.id == "self" and class_name:
          return self.symbol(module, f"{class_name}.{func.attr}")
        if owner.id in local_types:
          cls_module, cls_name = local_types[owner.id]
          return self.symbol(cls_module, f"{cls_name}.{func.attr}")
        alias = self.aliases[module].get(owner.id)
        if alias and alias[0] == "module":
          return self.symbol(alias[1], func.attr)
        if alias and alias[0] == "symbol":  # Class.method of an imported class.
          found = self.symbol(alias[1], alias[2])
          if found and isinstance(found[2], ast.ClassDef):
            return self.symbol(found[0], f"{found[1]}.{func.attr}")
        if owner.id in self.defs[module] and isinstance(self.defs[module][owner.id],
                                                         ast.ClassDef):
          return self.symbol(module, f"{owner.id}.{func.attr}")
      dotted = _dotted(owner)  # transformer.data.load_tokenizer(...) spelled out.
      if dotted and dotted in self.paths:
        return self.symbol(dotted, func.attr)
    return None


def _dotted(node):
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    owner = _dotted(node.value)
    return owner and f"{owner}.{node.attr}"
  return None


def _params(node, is_method):
  """(positional parameter names, all parameter names) of a def."""
  a = node.args
  positional = [p.arg for p in a.posonlyargs + a.args]
  if is_method and positional:
    positional = positional[1:]
  return positional, set(positional) | {p.arg for p in a.kwonlyargs}


class Flow:
  def __init__(self, project, sections):
    self.p, self.sections = project, sections
    self.entered = []  # files, in order of first entry
    self.edges = []  # (caller file, line, caller fn, callee file, callee fn, back?)
    self.edge_keys = set()
    self.explored = set()

  def config_path(self, expr, names):
    """The config path an expression denotes ("" for the whole config), or None."""
    if isinstance(expr, ast.Name):
      return names.get(expr.id)
    if isinstance(expr, ast.Attribute):
      owner = self.config_path(expr.value, names)
      if owner is None:
        return None
      path = f"{owner}.{expr.attr}" if owner else expr.attr
      return path if path in self.sections else None
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in CONFIG_METHODS_RETURNING_CONFIG):
      return self.config_path(expr.func.value, names)
    return None

  def enter(self, file):
    if file not in self.entered:
      self.entered.append(file)

  def visit(self, module, qualname, node, names):
    key = (module, qualname, tuple(sorted(names.items())))
    if key in self.explored:
      return
    self.explored.add(key)
    file = str(self.p.paths[module].relative_to(self.p.root))
    self.enter(file)
    if isinstance(node, ast.ClassDef):  # A dataclass: nothing to follow inside.
      return
    class_name = qualname.split(".")[0] if "." in qualname else None
    names = dict(names)
    local_types = {}
    nested = {n.name: n for n in ast.walk(node)
              if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n is not node}
    # Config names and local types: to a fixed point over the whole body.
    changed = True
    while changed:
      changed = False
      for n in ast.walk(node):
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
          targets = n.targets if isinstance(n, ast.Assign) else [n.target]
          path = self.config_path(n.value, names)
          for t in targets:
            if isinstance(t, ast.Name):
              if path is not None and t.id not in names:
                names[t.id], changed = path, True
              if isinstance(n.value, ast.Call) and t.id not in local_types:
                found = self.p.resolve(module, n.value.func, local_types, class_name)
                if found and isinstance(found[2], ast.ClassDef):
                  local_types[t.id], changed = (found[0], found[1]), True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in nested:
          for param, path in self._bind(n, nested[n.func.id], False, names).items():
            if param not in names:
              names[param], changed = path, True
    calls = sorted((n for n in ast.walk(node) if isinstance(n, ast.Call)),
                   key=lambda n: (n.lineno, n.col_offset))
    for call in calls:
      func, args = call.func, call
      if _dotted(func) in ("functools.partial", "partial") and call.args:
        func = call.args[0]
        args = ast.Call(func=func, args=call.args[1:], keywords=call.keywords)
      if not any(self.config_path(a.value if isinstance(a, ast.Starred) else a, names)
                 is not None for a in [*args.args, *(k.value for k in args.keywords)]):
        continue
      if isinstance(func, ast.Name) and func.id in nested:
        continue  # Part of this function's body, already searched.
      found = self.p.resolve(module, func, local_types, class_name)
      if found is None:
        continue
      cmod, cname, cnode = found
      target = cnode
      if isinstance(cnode, ast.ClassDef):
        init = self.p.symbol(cmod, f"{cname}.__init__")
        if init:
          cname, target = init[1], init[2]
      is_method = "." in cname
      bound = self._bind(args, target, is_method, names) if not isinstance(
          target, ast.ClassDef) else {}
      cfile = str(self.p.paths[cmod].relative_to(self.p.root))
      edge_key = (file, call.lineno, call.col_offset, cfile, cname)
      if edge_key not in self.edge_keys:
        self.edge_keys.add(edge_key)
        back = cfile != file and cfile in self.entered
        self.edges.append((file, call.lineno, qualname, cfile, cname, back))
      self.visit(cmod, cname, target, bound)

  def _bind(self, call, node, is_method, names):
    """{callee parameter: config path} for the call's config arguments."""
    positional, every = _params(node, is_method)
    bound = {}
    for i, arg in enumerate(call.args):
      if isinstance(arg, ast.Starred):
        break
      path = self.config_path(arg, names)
      if path is not None and i < len(positional):
        bound[positional[i]] = path
    for kw in call.keywords:
      path = self.config_path(kw.value, names) if kw.arg else None
      if path is not None and kw.arg in every:
        bound[kw.arg] = path
    return bound


def measure(root):
  project = Project(root)
  sections, how = sections_of(project.root)
  flow = Flow(project, sections)
  start = project.symbol("transformer.train", "train_and_evaluate")
  if start is None:
    raise SystemExit(f"no transformer/train.py:train_and_evaluate under {root}")
  param = _params(start[2], False)[0][0]
  flow.visit("transformer.train", "train_and_evaluate", start[2], {param: ""})
  moves = [e for e in flow.edges if e[0] != e[3]]
  return {
      "root": str(project.root),
      "sections": sorted(sections), "sections_from": how,
      "files": len(flow.entered), "moves": len(moves),
      "back": sum(e[5] for e in moves),
      "calls_followed": len(flow.edges),
      "entered": flow.entered,
      "edges": [f"{a}:{line} {fn} -> {b}:{gn}{'  (back)' if back else ''}"
                for a, line, fn, b, gn, back in flow.edges if a != b],
  }


def main(argv):
  if len(argv) < 2:
    raise SystemExit(__doc__)
  result = measure(argv[1])
  if "--json" in argv:
    print(json.dumps(result, indent=1))
    return
  print(f"{result['root']}: enters {result['files']} files, {result['moves']} moves between "
        f"files, {result['back']} of them back to a file already entered "
        f"({result['calls_followed']} config-passing calls followed; sections "
        f"{result['sections_from']}).")
  print("files, in order of entry: " + ", ".join(result["entered"]))
  if "--edges" in argv:
    print("\n".join(result["edges"]))


if __name__ == "__main__":
  main(sys.argv)
