"""The model zoo: builders returning linen modules whose taps name their layers."""

from sigprop.models.cnn import CFG_NAMES, CNN, cnn
from sigprop.models.mlp import MLP, mlp
from sigprop.models.resnet import ResNet, resnet, resnet56, wrn

__all__ = ["mlp", "cnn", "resnet", "resnet56", "wrn", "MLP", "CNN", "ResNet", "CFG_NAMES"]
