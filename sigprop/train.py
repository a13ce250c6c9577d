"""``sigprop.train``: train a model with optax, recording the metrics (a callable module:
``sigprop.train(model, data, ...)`` is :func:`sigprop.analyses.train.train`)."""

from sigprop.analyses.lr_search import RateSearch, learning_rate_search
from sigprop.analyses.train import OPTIMIZERS, SCALARS, TrainResult, train
from sigprop.util.modules import make_callable

__all__ = ["train", "learning_rate_search", "TrainResult", "RateSearch", "OPTIMIZERS", "SCALARS"]

make_callable(__name__, train)
