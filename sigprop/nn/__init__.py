"""Networks: normalizers (:mod:`~sigprop.nn.normalizers`), the layers the zoo is built of
(:mod:`~sigprop.nn.layers`, :mod:`~sigprop.nn.common`) and the model zoo, builders returning linen
modules whose taps name their layers (:func:`mlp`, :func:`cnn`, :func:`resnet56`, :func:`wrn`).
Depends on taps only: a model never computes a metric."""

from sigprop.nn.cnn import CFG_NAMES, CNN, cnn
from sigprop.nn.mlp import MLP, mlp
from sigprop.nn.resnet import ResNet, resnet, resnet56, wrn

__all__ = ["mlp", "cnn", "resnet", "resnet56", "wrn", "MLP", "CNN", "ResNet", "CFG_NAMES"]
