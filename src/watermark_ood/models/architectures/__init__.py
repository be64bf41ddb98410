"""Network definitions whose state dicts match widely shared CIFAR checkpoints."""

from .cifar_resnet import CifarResNet, cifar_resnet
from .densenet_bc import DenseNetBC
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet

__all__ = ["CifarResNet", "cifar_resnet", "DenseNetBC", "SmallCNN", "WideResNet"]
