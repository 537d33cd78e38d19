"""The PyTorch peer of the benchmarks: the reference's Wide-ResNet and step.

Written here from the architecture (see ``models/wide_resnet.py``), not copied:
pre-activation basic blocks, a 1x1 shortcut convolution on the activated input
where the shape changes, BatchNorm with PyTorch's defaults, no dropout. The
train step is what a PyTorch user runs: forward, cross-entropy, backward, and
``torch.optim.SGD`` with heavy-ball momentum and coupled weight decay.

PyTorch is not a dependency of the package; ``pip install -e '.[bench]'``
installs it (the CPU build where the index offers one).
"""


import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  """BN, ReLU, 3x3 conv (stride s), BN, ReLU, 3x3 conv, plus the shortcut."""

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels)
    self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
    self.shortcut = None
    if in_channels != out_channels or stride != 1:
      self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0,
                                bias=False)

  def forward(self, x):
    activated = F.relu(self.bn1(x))
    shortcut = x if self.shortcut is None else self.shortcut(activated)
    y = self.conv1(activated)
    y = self.conv2(F.relu(self.bn2(y)))
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-k for 32x32 images, initialised as the reference does."""

  def __init__(self, depth: int, widen_factor: int, num_classes: int = 10):
    super().__init__()
    blocks = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    layers, in_channels = [], 16
    for width, stride in zip(widths, (1, 2, 2)):
      for index in range(blocks):
        layers.append(
            BasicBlock(in_channels, width, stride if index == 0 else 1))
        in_channels = width
    self.blocks = nn.Sequential(*layers)
    self.final_bn = nn.BatchNorm2d(in_channels)
    self.classifier = nn.Linear(in_channels, num_classes)
    for module in self.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out",
                                nonlinearity="relu")
      elif isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    x = F.relu(self.final_bn(x))
    return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def parse_model_name(name: str) -> tuple[int, int]:
  """``"wrn-28-10"`` -> ``(28, 10)``."""
  _, depth, width = name.split("-")
  return int(depth), int(width)


def make_train_step(model: nn.Module, *, lr: float = 0.1,
                    momentum: float = 0.9, weight_decay: float = 5e-4,
                    autocast_dtype=None):
  """One SGD step (forward, loss, backward, update); returns the loss."""
  optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
  device_type = next(model.parameters()).device.type

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  return step
