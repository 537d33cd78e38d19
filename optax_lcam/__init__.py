"""LCAM: Loss-Controlled Asymmetric Momentum for optax (arXiv:2309.02130)."""

from optax_lcam._info import find_lcam_state
from optax_lcam._info import find_loss_control_state
from optax_lcam._info import lcam_info
from optax_lcam._info import LCAMInfo
from optax_lcam._info import loss_control_info
from optax_lcam._info import LossControlInfo
from optax_lcam._lcam import lcam
from optax_lcam._lcam import scale_by_lcam
from optax_lcam._lcam import ScaleByLCAMState
from optax_lcam._loss_controlled import loss_controlled
from optax_lcam._loss_controlled import LossControlledState
from optax_lcam._multi_steps import multi_steps_with_mean_loss
from optax_lcam._multi_steps import MultiStepsMeanLossState
from optax_lcam._phase import AVERAGING_MODES
from optax_lcam._phase import LossPhaseState
from optax_lcam._phase import PHASE_MODES
from optax_lcam._phase import RandomPhaseState
from optax_lcam._phase import running_mean

__version__ = "0.1.0"

__all__ = (
    "AVERAGING_MODES",
    "LCAMInfo",
    "LossControlInfo",
    "LossControlledState",
    "LossPhaseState",
    "MultiStepsMeanLossState",
    "PHASE_MODES",
    "RandomPhaseState",
    "ScaleByLCAMState",
    "find_lcam_state",
    "find_loss_control_state",
    "lcam",
    "lcam_info",
    "loss_control_info",
    "loss_controlled",
    "multi_steps_with_mean_loss",
    "running_mean",
    "scale_by_lcam",
)
