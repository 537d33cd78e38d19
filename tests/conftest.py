"""Test set-up: 8 fake CPU devices, given to XLA before jax is imported.

Decoded datasets are cached in the checkout's ignored `.cache/optax_lcam`, not
in the user's cache, unless `OPTAX_LCAM_CACHE` names another folder.
"""

import os
from pathlib import Path

os.environ.setdefault(
    "OPTAX_LCAM_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" /
                            "optax_lcam"))

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

# Compiling is most of a CPU test's time; the numbers do not depend on it.
jax.config.update("jax_disable_most_optimizations", True)

# Hypothesis profiles (tests/test_properties.py): "ci", bounded and
# reproducible, by default; "fuzz", long, with `--hypothesis-profile=fuzz`
# (`make fuzz`; FUZZ_EXAMPLES sets its number of examples per property).
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=200, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
