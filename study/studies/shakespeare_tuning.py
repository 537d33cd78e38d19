"""Stage 1 of the Shakespeare study: tune four families on the validation text.

  python -m study run shakespeare_tuning --workdir results/shakespeare_tuning --workers 2 --retries 5
  python -m study summarize results/shakespeare_tuning
  python study/studies/shakespeare_tuning.py select   # the rule's pick

The second regime differs from CIFAR-10 in every way that could hide an
effect of the loss signal: a Transformer with LayerNorm and no BatchNorm,
next-character loss, warm-up and cosine decay, AdamW as well as SGD. The
recipe is `train/configs/shakespeare.py`: GPT-4-128 (4 layers, width 128, 4
heads, 809,856 parameters), context 64, batch 32, 4 epochs of 482 steps
(1,928 steps), linear warm-up over the first quarter epoch, then cosine
decay to zero; Tiny Shakespeare from the shared text file, split by TFDS's
points; scored on the validation text (55,770 characters) only: the runs
never evaluate the test text (``data.eval_test=False``). One XLA device
per run, two runs at once on a 2-core host (``--workers 2`` gives each
run one core: 1.16 times the characters per second of one run on both
cores, docs/benchmarks.md); the device count changes only the rounding
of the sums over the batch (the loss after 20 steps: 3.613006 on one
device, 3.613004 on two).

Four families, one seed per configuration (seed 1000, which stage 2 does not
use):

* ``sgd``: SGD, heavy-ball momentum in {0.9, 0.95}, coupled weight decay
  5e-4 (the CIFAR recipe's), learning rate in {0.1, 0.2, 0.4, 0.8};
* ``lcam``: LCAM, pair (beta_below/beta_above) in {0.95/0.9, 0.9/0.95}, the
  same weight decay and rates;
* ``adamw``: AdamW, ``b1`` in {0.9, 0.95}, ``b2`` 0.99, decoupled weight
  decay 0.1 (nanoGPT's Shakespeare recipe), learning rate in {1e-3, 2e-3,
  4e-3, 8e-3};
* ``lc_adamw``: AdamW with ``b1`` loss-controlled (`optax_lcam.
  loss_controlled`, LCAM's rule: epoch averaging, lag), pair (``b1`` below
  the running mean / at or above it) in {0.95/0.9, 0.9/0.95}, the same
  ``b2``, weight decay and rates.

The grids are placed so that their expected optimum is inside: a 600-step
probe of this model with warm-up and cosine reached 2.09 nats with SGD
(momentum 0.9) at 0.3 and diverged at 1.0 for SGD and LCAM alike; AdamW at
1e-3 reached 2.17 and looked under-stepped.

Rule, fixed before the first run:

* Each family's winner is its configuration with the lowest final
  validation loss (``val_loss`` after the last epoch, nats per character); a
  tie (equal to 1e-9) goes to the lower learning rate, then to the lower
  momentum or ``b1`` (SGD, AdamW) or to the pair 0.95/0.9 (LCAM,
  loss-controlled AdamW).
* Divergence is a result, not a failure: with ``on_nonfinite_loss="stop"`` a
  run whose training loss turns non-finite stops, records ``"kind":
  "diverged"``, is not retried, ranks last in its family and is reported as
  diverged. Any other failure is retried from its checkpoint up to 5 times
  (``--retries 5``), which changes no number.
* A winner at its family's smallest or largest learning rate extends that
  family's grid outward, halving below or doubling above, with both of its
  momenta or pairs, one rate at a time, until the winner is inside the grid;
  a new larger rate whose runs all diverge puts the winner inside. The study
  argument names each extended family's new end:
  ``shakespeare_tuning:sgd=1.6`` adds SGD at 1.6, ``:adamw=5e-4`` AdamW at
  5e-4; ``python study/studies/shakespeare_tuning.py select`` says when.

Stage 2 takes the four winners; its pilot, arms, comparisons, margin and
seeds are pre-registered in their own study files before their first runs.
"""

import math
import os
import sys

import ml_collections

NUM_EPOCHS = 4
SEED = 1000
WORKDIR = "results/shakespeare_tuning"
SGD_RATES = (0.1, 0.2, 0.4, 0.8)
ADAMW_RATES = (1e-3, 2e-3, 4e-3, 8e-3)
MOMENTA = (0.9, 0.95)
PAIRS = ((0.95, 0.9), (0.9, 0.95))
SGD_WEIGHT_DECAY = 5e-4
ADAMW_WEIGHT_DECAY = 0.1
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def sgd_arm(learning_rate: float, momentum: float) -> tuple[str, dict]:
  return f"sgd-lr{learning_rate:g}-m{momentum}", {
      "optimizer.name": "sgd", "optimizer.momentum": momentum,
      "optimizer.weight_decay": SGD_WEIGHT_DECAY,
      "schedule.learning_rate": learning_rate}


def lcam_arm(learning_rate: float, pair: tuple[float, float]
             ) -> tuple[str, dict]:
  below, above = pair
  return f"lcam-lr{learning_rate:g}-{below}/{above}", {
      "optimizer.name": "lcam", "optimizer.beta_below": below,
      "optimizer.beta_above": above,
      "optimizer.weight_decay": SGD_WEIGHT_DECAY,
      "schedule.learning_rate": learning_rate}


def adamw_arm(learning_rate: float, b1: float) -> tuple[str, dict]:
  return f"adamw-lr{learning_rate:g}-b{b1}", {
      "optimizer.name": "adamw", "optimizer.b1": b1,
      "optimizer.weight_decay": ADAMW_WEIGHT_DECAY,
      "schedule.learning_rate": learning_rate}


def lc_adamw_arm(learning_rate: float, pair: tuple[float, float]
                 ) -> tuple[str, dict]:
  below, above = pair
  return f"lc_adamw-lr{learning_rate:g}-{below}/{above}", {
      "optimizer.name": "adamw", "optimizer.loss_control":
          f'{{"b1": [{below}, {above}]}}',
      "optimizer.weight_decay": ADAMW_WEIGHT_DECAY,
      "schedule.learning_rate": learning_rate}


# family -> (its arm maker, its second axis, its rates before any extension)
FAMILIES = {"sgd": (sgd_arm, MOMENTA, SGD_RATES),
            "lcam": (lcam_arm, PAIRS, SGD_RATES),
            "adamw": (adamw_arm, MOMENTA, ADAMW_RATES),
            "lc_adamw": (lc_adamw_arm, PAIRS, ADAMW_RATES)}


def family_rates(extend: str = "") -> dict[str, tuple[float, ...]]:
  """Each family's learning rates, halved or doubled out to ``extend``'s.

  >>> family_rates("sgd=1.6,adamw=2.5e-4")["sgd"]
  (0.1, 0.2, 0.4, 0.8, 1.6)
  >>> family_rates("adamw=2.5e-4")["adamw"]
  (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008)
  """
  rates = {family: list(grid) for family, (_, _, grid) in FAMILIES.items()}
  for item in filter(None, extend.split(",")):
    family, _, value = item.partition("=")
    if family not in rates:
      raise ValueError(f"Unknown family {family!r} in {extend!r}: use "
                       f"{', '.join(FAMILIES)}, e.g. 'sgd=1.6'.")
    end, grid = float(value), rates[family]
    while end > grid[-1] * (1 + 1e-9):
      grid.append(grid[-1] * 2)
    while end < grid[0] * (1 - 1e-9):
      grid.insert(0, grid[0] / 2)
    if not any(math.isclose(end, rate) for rate in grid):
      raise ValueError(f"{family}={value}: the rates halve or double from "
                       f"{FAMILIES[family][2]}.")
  return {family: tuple(float(f"{r:.6g}") for r in grid)
          for family, grid in rates.items()}


def get_study(extend: str = "") -> ml_collections.ConfigDict:
  rates = family_rates(extend)
  families = {family: [make(lr, second) for lr in rates[family]
                       for second in axis]
              for family, (make, axis, _) in FAMILIES.items()}
  study = {
      "config": "train/configs/shakespeare.py",
      "overrides": {
          "data.source": "text:../shared/data/tinyshakespeare.txt",
          "data.eval_test": False,
          "num_epochs": NUM_EPOCHS,
          "host_devices": 1,
          "progress": False,
          "on_nonfinite_loss": "stop",
      },
      "arms": dict(arm for arms in families.values() for arm in arms),
      "seeds": [SEED],
      "baseline": adamw_arm(ADAMW_RATES[0], MOMENTA[0])[0],
      "metric": "val_loss",
      "metric_direction": "lower",
      "targets": [2.2, 2.0, 1.8],
      "families": {family: [name for name, _ in arms]
                   for family, arms in families.items()},
      "selection": (
          "Per family, the arm with the lowest final val_loss; a diverged "
          "run ranks last; a tie (equal to 1e-9) goes to the lower learning "
          "rate, then to the lower momentum or b1 (SGD, AdamW) or to the "
          "pair 0.95/0.9 (LCAM, loss-controlled AdamW). A winner at its "
          "family's smallest or largest rate extends that family outward."),
  }
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)


def select(workdir: str = WORKDIR) -> dict:
  """The rule's pick per family, and whether it sits on the grid's smallest
  or largest rate (`study.tuning.select`)."""
  sys.path.insert(0, REPO_ROOT)
  from study import tuning  # pylint: disable=g-import-not-at-top
  return tuning.select([os.path.join(REPO_ROOT, workdir)])


def next_spec(workdir: str = WORKDIR) -> str:
  """The study to run next in ``workdir`` by the rule: "" once done.

  Before the first run, the registered grid; while runs are pending, the
  grid the folder holds; then, for each family whose winner sits on an edge,
  one more rate outward (``shakespeare_tuning:sgd=1.6``). "" once every
  family is final with its winner inside its grid.
  """
  if not os.path.isfile(os.path.join(REPO_ROOT, workdir, "study.json")):
    return "shakespeare_tuning"
  chosen = select(workdir)
  from study import tuning  # pylint: disable=g-import-not-at-top
  ends = {}  # (family, "smallest" or "largest") -> the rate there.
  for family, members in chosen["families"].items():
    rates, registered = sorted(map(tuning.learning_rate, members)), (
        FAMILIES[family][2])
    if rates[0] < registered[0]:
      ends[family, "smallest"] = rates[0]
    if rates[-1] > registered[-1]:
      ends[family, "largest"] = rates[-1]
  selection = chosen["selection"]
  if all(pick["complete"] for pick in selection.values()):
    edges = {family: pick for family, pick in selection.items()
             if pick["edge"]}
    if not edges:
      return ""
    for family, pick in edges.items():
      rate = tuning.learning_rate(pick["winner"])
      ends[family, pick["edge"]] = (
          rate * 2 if pick["edge"] == "largest" else rate / 2)
  extend = ",".join(f"{family}={ends[family, edge]:g}" for family in FAMILIES
                    for edge in ("smallest", "largest")
                    if (family, edge) in ends)
  return "shakespeare_tuning" + (f":{extend}" if extend else "")


def print_selection(workdir: str = WORKDIR) -> int:
  """Prints every configuration's final validation loss and the rule's pick;
  0 once every family is complete with its winner inside its grid."""
  chosen = select(workdir)
  from study import tuning  # pylint: disable=g-import-not-at-top
  return tuning.print_selection(chosen, lambda value: f"{value:.4f} nats")


if __name__ == "__main__":
  sys.path.insert(0, REPO_ROOT)
  from study import cli  # pylint: disable=g-import-not-at-top
  sys.exit(cli.study_file_command(sys.argv, {"select": print_selection}))
