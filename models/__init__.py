"""Flax networks: Wide-ResNets matching the LCAM reference, character GPTs.

See ``wide_resnet.py`` for the Wide-ResNet, ``batch_norm.py`` for the masked,
cross-device BatchNorm it uses, ``gpt.py`` for the nanoGPT-style Transformer,
``dropout.py`` for the dropout of both, whose masks do not depend on the
device layout, and ``registry.py`` for the named models of both families.
"""

from models.batch_norm import batch_moments
from models.batch_norm import BatchNorm
from models.batch_norm import updated_running_moments
from models.dropout import ExampleDropout
from models.gpt import GPT
from models.gpt import GPT_2_32
from models.gpt import GPT_4_128
from models.gpt import GPT_6_384
from models.registry import create_model
from models.registry import gpt_context
from models.registry import MODEL_NAMES
from models.wide_resnet import BasicBlock
from models.wide_resnet import blocks_per_group
from models.wide_resnet import canonical_model_name
from models.wide_resnet import count_params
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
    "GPT",
    "GPT_2_32",
    "GPT_4_128",
    "GPT_6_384",
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
    "gpt_context",
    "updated_running_moments",
)
