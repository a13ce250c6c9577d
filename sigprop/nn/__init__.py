"""Networks: normalizers (:mod:`~sigprop.nn.normalizers`, :mod:`~sigprop.nn.sepnorm`), the layers
the zoo is built of (:mod:`~sigprop.nn.layers`, :mod:`~sigprop.nn.common`,
:mod:`~sigprop.nn.attention`, :mod:`~sigprop.nn.ngpt`) and the model zoo, builders returning linen
modules whose taps name their layers (:func:`mlp`, :func:`cnn`, :func:`resnet56`, :func:`wrn`,
:func:`transformer`).
Depends on taps only: a model never computes a metric."""

from sigprop.nn.cnn import CFG_NAMES, CNN, cnn
from sigprop.nn.mlp import MLP, mlp
from sigprop.nn.resnet import ResNet, resnet, resnet56, wrn
from sigprop.nn.transformer import Transformer, transformer

__all__ = ["mlp", "transformer", "cnn", "resnet", "resnet56", "wrn", "MLP", "Transformer", "CNN",
           "ResNet", "CFG_NAMES"]
