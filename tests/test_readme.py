"""The README's Python examples run as written, in order, in one namespace."""

from pathlib import Path
import re


README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_examples_run(capsys):
  blocks = python_blocks(README.read_text())
  assert len(blocks) >= 7, "the README lost its examples"
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "next beta" in printed and "36536884" in printed
  # The pmap example returned one copy of the parameters (out_axes=None).
  assert namespace["params"]["w"].shape == (3,)
  info = namespace["optax_lcam"].lcam_info(namespace["opt_state"])
  assert int(info.step) == 1
