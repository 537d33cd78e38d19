"""Checks the files of the sdist and the wheel that `make package` built.

Usage: python .ci/check_dist.py DIST_DIR

The wheel must hold the package's modules, its ``py.typed`` marker and the
license (beside the metadata) and nothing else; the sdist, what builds the
wheel and the documents beside it, and nothing large. Both carry the version of
``optax_lcam.__version__``. Prints what it found; exits non-zero, naming each
problem, otherwise.
"""

import ast
import pathlib
import sys
import tarfile
import zipfile

PACKAGE = "optax_lcam"
SOURCE = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
# What setuptools writes into any wheel's .dist-info, beside the license.
WHEEL_METADATA = ("METADATA", "WHEEL", "RECORD", "top_level.txt")
# The sdist's top level: the build's inputs, its metadata and the documents.
SDIST_TOP_LEVEL = {"PKG-INFO", "pyproject.toml", "setup.cfg", "README.md",
                   "LICENSE", "CHANGELOG.md", "MANIFEST.in", PACKAGE,
                   f"{PACKAGE}.egg-info"}
MAX_SDIST_BYTES = 1_000_000


def source_version() -> str:
  """``__version__`` of the checkout's package, read without importing it."""
  tree = ast.parse((SOURCE / "__init__.py").read_text())
  for node in tree.body:
    if (isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]):
      return ast.literal_eval(node.value)
  raise ValueError(f"No __version__ in {SOURCE / '__init__.py'}.")


def expected_wheel_files(version: str) -> set[str]:
  """The wheel's file names: the checkout's modules, py.typed, the license."""
  modules = {f"{PACKAGE}/{p.name}" for p in SOURCE.glob("*.py")}
  dist_info = f"{PACKAGE}-{version}.dist-info"
  metadata = {f"{dist_info}/{name}" for name in WHEEL_METADATA}
  return modules | metadata | {f"{PACKAGE}/py.typed",
                               f"{dist_info}/licenses/LICENSE"}


def wheel_problems(wheel: pathlib.Path, version: str) -> list[str]:
  """What is wrong with the wheel's file list, if anything."""
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
  expected = expected_wheel_files(version)
  problems = [f"{wheel.name}: unexpected file {name}"
              for name in sorted(names - expected)]
  problems += [f"{wheel.name}: missing {name}"
               for name in sorted(expected - names)]
  return problems


def sdist_problems(sdist: pathlib.Path, version: str) -> list[str]:
  """What is wrong with the sdist's files, if anything."""
  root = f"{PACKAGE}-{version}"
  with tarfile.open(sdist) as archive:
    members = archive.getmembers()
  problems = []
  for member in members:
    parts = pathlib.PurePosixPath(member.name).parts
    if parts[0] != root:
      problems.append(f"{sdist.name}: {member.name} is outside {root}/")
    elif len(parts) > 1 and parts[1] not in SDIST_TOP_LEVEL:
      problems.append(f"{sdist.name}: unexpected {member.name}")
  size = sum(member.size for member in members)
  if size > MAX_SDIST_BYTES:
    problems.append(f"{sdist.name}: {size} bytes unpacked, more than "
                    f"{MAX_SDIST_BYTES}")
  return problems


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2
  dist = pathlib.Path(argv[1])
  version = source_version()
  wheels = sorted(dist.glob("*.whl"))
  sdists = sorted(dist.glob("*.tar.gz"))
  if len(wheels) != 1 or len(sdists) != 1:
    print(f"error: expected one wheel and one sdist in {dist}/, found "
          f"{[p.name for p in wheels + sdists]}", file=sys.stderr)
    return 1
  problems = []
  for built in (wheels[0], sdists[0]):
    if not built.name.startswith(f"{PACKAGE}-{version}"):
      problems.append(f"{built.name}: not version {version} "
                      f"({PACKAGE}.__version__)")
  problems += wheel_problems(wheels[0], version)
  problems += sdist_problems(sdists[0], version)
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  if not problems:
    print(f"{wheels[0].name} and {sdists[0].name}: the expected files")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
