"""The package's shape: no import cycles between its modules (function-local imports included,
since a local import is how a cycle hides), `pip install .` gives an importable package, and the
README's Layout names every file of the repository's code folders."""

import ast
import fnmatch
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "defenses_jax"


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _modules() -> dict:
  """Module name -> file, for every module of the package."""
  found = {}
  for directory, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        found[_module_name(path)] = path
  return found


def import_graph() -> dict:
  """Module -> the package's modules it imports anywhere in its file."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        for alias in node.names:  # `from package import module` imports the module.
          sub = f"{node.module}.{alias.name}"
          targets.add(sub if sub in modules else node.module)
    # A package's __init__ runs before any of its modules, so a module's import of its own
    # package (or a parent) is no cycle; sibling modules importing each other are.
    ancestors = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
    graph[name] = sorted(t for t in targets if t in modules and t != name and t not in ancestors)
  return graph


def find_cycle(graph: dict):
  """One import cycle as a list of modules, or None."""
  state = {}  # 1: on the current path, 2: done.

  def visit(node, path):
    state[node] = 1
    for nxt in graph[node]:
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt, path + [nxt])
        if cycle:
          return cycle
    state[node] = 2
    return None

  for start in sorted(graph):
    if start not in state:
      cycle = visit(start, [start])
      if cycle:
        return cycle
  return None


def test_the_cycle_finder_finds_a_planted_cycle():
  assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_the_package_has_no_import_cycles():
  graph = import_graph()
  assert "defenses_jax.train" in graph and "defenses_jax.evaluation.monitor" in graph["defenses_jax.train"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_defenses_read_and_write_no_files():
  # Caches and checkpoints belong to the experiment layer: Defense.resolve reaches another
  # experiment through load_trained, and caches what it derives through that one's `cached`.
  graph, no_files = import_graph(), {"os", "json", "pickle", "shutil", "pathlib"}
  for name, path in _modules().items():
    if not name.startswith(PACKAGE + ".defenses"):
      continue
    assert not {f"{PACKAGE}.{m}" for m in ("artifact_cache", "files", "checkpoint")} & set(
        graph[name]), name
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not no_files & imported, (name, no_files & imported)
    assert not any(isinstance(n, ast.Name) and n.id == "open" for n in ast.walk(tree)), name


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "pyproject.toml")), reason="no pyproject")
def test_pip_install_gives_an_importable_package(tmp_path):
  """Installs the checkout (without dependencies: those of this environment are used) into a
  fresh target directory and imports it from elsewhere, so nothing relies on the checkout being
  the working directory or on sys.path edits."""
  # Built from a copy of what the package is made of, so no build files land in the checkout.
  source = tmp_path / "source"
  shutil.copytree(os.path.join(ROOT, PACKAGE), source / PACKAGE,
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  target = tmp_path / "site"
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                         "--no-build-isolation", "--target", str(target), str(source)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert (target / PACKAGE / "attacks" / "gradient.py").exists()
  env = dict(os.environ, PYTHONPATH=str(target))
  code = ("import defenses_jax, defenses_jax.attacks, defenses_jax.evaluation, defenses_jax.suites.runner;"
          "print(defenses_jax.__file__)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().startswith(str(target))


LAYOUT_ROOTS = ("defenses_jax", "experiments", "benchmarks", "tests")


def readme_layout(text: str) -> set:
  """The paths the README's Layout block names: one entry per line, a folder ending in '/' and
  its entries indented below it; an entry may be a glob (`results/*.json`)."""
  block = text.split("\n## Layout\n", 1)[1].split("```", 2)[1]
  paths, folders = set(), []  # folders: (indent, path) of the open folders.
  for line in block.splitlines()[1:]:
    if not line.strip():
      continue
    indent, name = len(line) - len(line.lstrip()), line.split()[0]
    while folders and folders[-1][0] >= indent:
      folders.pop()
    path = (folders[-1][1] if folders else "") + name
    if name.endswith("/"):
      folders.append((indent, path))
    else:
      paths.add(path)
  return paths


def repository_files() -> set:
  """Every file under LAYOUT_ROOTS but caches, hidden files and empty __init__.py files."""
  found = set()
  for root in LAYOUT_ROOTS:
    for directory, subdirs, files in os.walk(os.path.join(ROOT, root)):
      subdirs[:] = [d for d in subdirs if d != "__pycache__" and not d.startswith(".")]
      for name in files:
        path = os.path.join(directory, name)
        if (name.startswith(".") or name.endswith(".pyc")
            or (name == "__init__.py" and os.path.getsize(path) == 0)):
          continue
        found.add(os.path.relpath(path, ROOT).replace(os.sep, "/"))
  return found


def test_the_layout_parser_reads_nesting_and_globs():
  text = ("x\n## Layout\n\n```\na.py  top\npkg/  the package\n  b.py  one\n  sub/\n    c.py\n"
          "  d.py  back up\n  results/*.json  rows\n```\n")
  assert readme_layout(text) == {"a.py", "pkg/b.py", "pkg/sub/c.py", "pkg/d.py",
                                 "pkg/results/*.json"}


def test_the_readme_layout_lists_every_file_and_no_other():
  with open(os.path.join(ROOT, "README.md")) as f:
    listed = readme_layout(f.read())
  files = repository_files()
  unlisted = sorted(f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in listed))
  assert not unlisted, f"README.md's Layout does not list {unlisted}: add a line for each."
  listed_here = [p for p in listed if p.split("/")[0] in LAYOUT_ROOTS]
  stale = sorted(p for p in listed_here
                 if not any(fnmatch.fnmatchcase(f, p) for f in files)
                 and not os.path.exists(os.path.join(ROOT, p)))
  assert not stale, f"README.md's Layout lists files that do not exist: {stale}."
