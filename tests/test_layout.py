"""The repository's layout: packages import downward only, and public APIs.

`train/` makes one run, `study/` runs and reads many, `bench/` measures; the
files of a run's workdir (`train.record`) are the only contract between
making runs and reading them.
"""

import ast
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("optax_lcam", "models", "train", "study", "bench")
# What `study` may import of `train`: the config, the record, the workdir
# lock and the signal helper; never the loop, the data or the model.
STUDY_USES_OF_TRAIN = {"train.config", "train.record", "train.devices",
                       "train.signals"}


def _module_name(path: str) -> str:
  relative = os.path.relpath(path, REPO).removesuffix(".py")
  return relative.replace(os.sep, ".").removesuffix(".__init__")


def _imports(path: str) -> set[tuple[str, str | None]]:
  """What a file imports of the repository, at any depth of the file:
  ``(module, None)`` for ``import module``, ``(module, name)`` for ``from
  module import name``."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update((alias.name, None) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.update((node.module, alias.name) for alias in node.names)
  return {pair for pair in found if pair[0].split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
  """Module -> the repository modules it imports, for every package file
  but the study definitions and configs (data read by the harness)."""
  files = {}
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(REPO, package)):
      files.update({_module_name(os.path.join(folder, name)):
                    os.path.join(folder, name)
                    for name in names if name.endswith(".py")})
  graph = {}
  for module, path in files.items():
    graph[module] = {f"{name}.{member}" if f"{name}.{member}" in files
                     else name for name, member in _imports(path)}
    graph[module] = (graph[module] & files.keys()) - {module}
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of the graph as a path, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for child in sorted(graph.get(node, ())):
      if state.get(child) == "open":
        return stack[stack.index(child):] + [child]
      if child not in state:
        found = visit(child)
        if found:
          return found
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
  graph = import_graph()
  assert "study.report" in graph and "train.loop" in graph
  assert _cycle(graph) is None


def test_train_never_imports_study_and_study_only_train_interfaces():
  graph = import_graph()
  for module, imported in graph.items():
    if module.startswith("train."):
      assert not {m for m in imported if m.split(".")[0] == "study"}, module
    if module.startswith("study.") and not module.startswith("study.studies"):
      assert {m for m in imported
              if m.startswith("train.")} <= STUDY_USES_OF_TRAIN, module


def test_no_private_jax_or_orbax_names():
  pattern = re.compile(r"(from|import) jax\._src|orbax-checkpoint-tmp")
  for package in ("train", "study", "bench"):
    for folder, _, names in os.walk(os.path.join(REPO, package)):
      for name in names:
        if name.endswith(".py"):
          with open(os.path.join(folder, name), encoding="utf-8") as f:
            assert not pattern.search(f.read()), os.path.join(folder, name)


def test_record_field_names_are_spelled_only_in_the_record():
  for package in ("train", "study", "bench"):
    for folder, _, names in os.walk(os.path.join(REPO, package)):
      if folder.endswith(("studies", "configs")):
        continue  # Study definitions name the metric they compare.
      for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".py") and path != os.path.join(REPO, "train",
                                                         "record.py"):
          with open(path, encoding="utf-8") as f:
            assert '"test_accuracy"' not in f.read(), path


@pytest.mark.parametrize("old, new", [("train.study", "python -m study"),
                                      ("train.plot", "python -m study.plot")])
def test_old_commands_name_the_new_ones(old, new):
  result = subprocess.run([sys.executable, "-m", old, "summarize", "x"],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 1
  assert result.stderr.startswith("error:") and new in result.stderr
  assert len(result.stderr.splitlines()) == 1
  assert not _imports(os.path.join(REPO, *old.split(".")) + ".py")


def test_every_command_has_help_that_lists_its_options():
  for command, shown in (
      (["train"], ["--config.optimizer.beta_below=0.95",
                   "--config.schedule.learning_rate=0.1", "--workdir"]),
      (["train", "--config", "train/configs/quick.py"],
       ["train/configs/quick.py", "--config.num_epochs=5"]),
      (["train.evaluate"], ["workdir"]),
      (["study"], ["run", "summarize", "power"]),
      (["study", "run"], ["--retries", "--workers"]),
      (["study.plot"], ["--output", "--table"])):
    result = subprocess.run([sys.executable, "-m", *command, "--help"],
                            cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, (command, result.stderr)
    for text in shown:
      assert text in result.stdout, (command, text)
