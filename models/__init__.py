"""Flax Wide-ResNets matching the LCAM reference network.

See ``wide_resnet.py`` for the architecture, ``batch_norm.py`` for the
masked, cross-device BatchNorm it uses and ``dropout.py`` for its dropout,
whose masks do not depend on the device layout.
"""

from models.batch_norm import batch_moments
from models.batch_norm import BatchNorm
from models.batch_norm import updated_running_moments
from models.dropout import ExampleDropout
from models.wide_resnet import BasicBlock
from models.wide_resnet import blocks_per_group
from models.wide_resnet import canonical_model_name
from models.wide_resnet import count_params
from models.wide_resnet import create_model
from models.wide_resnet import MODEL_NAMES
from models.wide_resnet import WideResNet
from models.wide_resnet import WRN_10_1
from models.wide_resnet import WRN_16_4
from models.wide_resnet import WRN_16_8
from models.wide_resnet import WRN_28_10
from models.wide_resnet import WRN_40_4

__all__ = (
    "BasicBlock",
    "BatchNorm",
    "ExampleDropout",
    "MODEL_NAMES",
    "WRN_10_1",
    "WRN_16_4",
    "WRN_16_8",
    "WRN_28_10",
    "WRN_40_4",
    "WideResNet",
    "batch_moments",
    "blocks_per_group",
    "canonical_model_name",
    "count_params",
    "create_model",
    "updated_running_moments",
)
