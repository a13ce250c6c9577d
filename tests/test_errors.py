"""Boundary errors: every bad argument is a ValueError whose message names the parameter.

Each case is a zero-argument callable that must raise ``ValueError``; ``match`` is a regex the
message must contain (the parameter's name), ``also`` are further substrings it must contain
(the offending width, the known names, ...). No error may need a compiled computation: the
analysis engine (``sigprop.core.engine._core``) is replaced by a tripwire for the whole table, so an
error raised only after jitting fails the test instead of passing slowly.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import sigprop
from sigprop.nn import normalizers

analyze_module = importlib.import_module("sigprop.analyses.analyze")  # `sigprop.analyze` is the function

KNOWN = ("layernorm", "rmsnorm", "groupnorm", "evonorm_b0")  # a sample of the listed names


def tiny_mlp(**kw):
    return sigprop.mlp(2, 8, **kw)


def tiny_cnn(**kw):
    return sigprop.cnn("uniform", depth=2, width=8, **kw)


# (id, call, match, also)
CASES = [
    # ---- unknown normalizer: suggests the closest name and lists the known ones
    ("norm-unknown-cnn", lambda: sigprop.cnn("cfg_10", norm="batchnrm"), r"\bnorm\b", KNOWN),
    ("norm-unknown-mlp", lambda: sigprop.mlp(2, 8, norm="batchnrm"), r"\bnorm\b", KNOWN),
    ("norm-unknown-resnet56", lambda: sigprop.resnet56(norm="batchnrm"), r"\bnorm\b", KNOWN),
    ("norm-unknown-wrn", lambda: sigprop.wrn(norm="batchnrm"), r"\bnorm\b", KNOWN),
    ("norm-unknown-make", lambda: normalizers.make("batchnrm"), r"\bnorm\b", KNOWN),
    ("norm-not-a-name", lambda: tiny_mlp(norm=3), r"\bnorm\b", KNOWN),
    # ---- group size / number of groups must divide the width; the message names the width
    ("group_size-cnn-64", lambda: sigprop.cnn("cfg_10", norm="groupnorm", group_size=3),
     r"group_size", ("64",)),
    ("group_size-resnet56-32", lambda: sigprop.resnet56(norm="groupnorm", group_size=5),
     r"group_size", ("32",)),
    ("group_size-mlp-10", lambda: sigprop.mlp(3, 10, norm="groupnorm", group_size=4),
     r"group_size", ("10",)),
    ("group_size-evonorm_s0", lambda: sigprop.mlp(3, 10, norm="evonorm_s0", group_size=4),
     r"group_size", ("10",)),
    ("num_groups-mlp-64", lambda: sigprop.mlp(3, 64, norm="groupnorm", num_groups=7),
     r"num_groups", ("64",)),
    ("group_size-and-num_groups", lambda: tiny_mlp(norm="groupnorm", group_size=4, num_groups=2),
     r"group_size", ("num_groups",)),
    ("group_size-zero", lambda: tiny_mlp(norm="groupnorm", group_size=0), r"group_size", ()),
    ("group_size-make", lambda: normalizers.make("groupnorm", group_size=-2), r"group_size", ()),
    # ---- depth / width
    ("depth-mlp-0", lambda: sigprop.mlp(0, 8), r"\bdepth\b", ()),
    ("depth-mlp-float", lambda: sigprop.mlp(2.5, 8), r"\bdepth\b", ()),
    ("depth-mlp-bool", lambda: sigprop.mlp(True, 8), r"\bdepth\b", ()),
    ("depth-cnn-0", lambda: sigprop.cnn("uniform", depth=0), r"\bdepth\b", ()),
    ("depth-cnn-missing", lambda: sigprop.cnn("uniform"), r"\bdepth\b", ()),
    ("depth-cnn-cfg", lambda: sigprop.cnn("cfg_10", depth=5), r"\bdepth\b", ()),
    ("width-mlp-0", lambda: sigprop.mlp(3, 0), r"\bwidth\b", ()),
    ("width-cnn-0", lambda: sigprop.cnn("uniform", depth=3, width=0), r"\bwidth\b", ()),
    ("depth-wrn-25", lambda: sigprop.wrn(depth=25), r"\bdepth\b", ("25",)),
    ("depth-wrn-2", lambda: sigprop.wrn(depth=2), r"\bdepth\b", ()),
    ("k-wrn-0", lambda: sigprop.wrn(depth=26, k=0), r"\bk\b", ()),
    # ---- cnn configuration
    ("cfg-unknown", lambda: sigprop.cnn("cfg_11"), r"\bcfg\b", ("cfg_10", "uniform")),
    # ---- activation
    ("activation-unknown", lambda: tiny_mlp(activation="relu6"), r"\bactivation\b", ("relu6",)),
    ("activation-unknown-cnn", lambda: tiny_cnn(activation="relu6"), r"\bactivation\b", ()),
    ("activation-with-evonorm_b0", lambda: tiny_mlp(norm="evonorm_b0", activation="relu"),
     r"\bactivation\b", ()),
    ("activation-with-evonorm_s0", lambda: tiny_cnn(norm="evonorm_s0", activation="relu"),
     r"\bactivation\b", ()),
    # ---- classifier outputs
    ("n_classes-mlp-0", lambda: tiny_mlp(n_classes=0), r"n_classes", ()),
    ("n_classes-cnn-0", lambda: tiny_cnn(n_classes=0), r"n_classes", ()),
    ("n_classes-resnet56-0", lambda: sigprop.resnet56(n_classes=0), r"n_classes", ()),
    ("n_classes-wrn-0", lambda: sigprop.wrn(n_classes=0), r"n_classes", ()),
    # ---- options a normalizer does not take
    ("option-group_size-batchnorm", lambda: sigprop.cnn("cfg_10", norm="batchnorm", group_size=4),
     r"group_size", ()),
    ("option-make", lambda: normalizers.make("layernorm", reg_strength=2.0), r"reg_strength", ()),
    # ---- conv implementation
    ("conv_impl-cnn", lambda: tiny_cnn(conv_impl="fast"), r"conv_impl", ("fast",)),
    ("conv_impl-resnet56", lambda: sigprop.resnet56(conv_impl="fast"), r"conv_impl", ("fast",)),
    ("conv_impl-wrn", lambda: sigprop.wrn(conv_impl="fast"), r"conv_impl", ("fast",)),
    # ---- analyze: a batch of 1 (batch statistics, and inter-sample metrics in general)
    *[(f"inputs-batch1-{n}", (lambda n=n: sigprop.analyze(tiny_mlp(norm=n), (1, 4))),
       r"\binputs\b", (n,))
      for n in ("batchnorm", "bmlv", "variancenorm", "evonorm_b0")],
    ("inputs-batch1-layernorm", lambda: sigprop.analyze(tiny_mlp(norm="layernorm"), (1, 4)),
     r"\binputs\b", ()),
    ("inputs-batch1-array", lambda: sigprop.analyze(tiny_mlp(norm="batchnorm"), np.ones((1, 4))),
     r"\binputs\b", ("batchnorm",)),
    # ---- analyze: inputs that do not fit the model
    ("inputs-3d-cnn", lambda: sigprop.analyze(tiny_cnn(norm="none"), (4, 8, 8)), r"\binputs\b", ()),
    ("inputs-3d-cnn-array", lambda: sigprop.analyze(tiny_cnn(norm="none"), np.ones((4, 8, 8))),
     r"\binputs\b", ()),
    ("inputs-3d-resnet56", lambda: sigprop.analyze(sigprop.resnet56(), (4, 32, 32)),
     r"\binputs\b", ()),
    ("inputs-1d-mlp", lambda: sigprop.analyze(tiny_mlp(), (4,)), r"\binputs\b", ()),
    ("inputs-empty-shape", lambda: sigprop.analyze(tiny_mlp(), ()), r"\binputs\b", ()),
    ("inputs-zero-dim", lambda: sigprop.analyze(tiny_cnn(norm="none"), (4, 0, 8, 3)),
     r"\binputs\b", ()),
    ("inputs-negative-dim", lambda: sigprop.analyze(tiny_mlp(), (4, -8)), r"\binputs\b", ()),
    ("inputs-string", lambda: sigprop.analyze(tiny_mlp(), "abc"), r"\binputs\b", ()),
    ("inputs-none", lambda: sigprop.analyze(tiny_mlp(), None), r"\binputs\b", ()),
    # ---- analyze: seeds and precision
    ("seeds-0", lambda: sigprop.analyze(tiny_mlp(), (4, 8), seeds=0), r"\bseeds\b", ()),
    ("seeds-float", lambda: sigprop.analyze(tiny_mlp(), (4, 8), seeds=1.5), r"\bseeds\b", ()),
    ("seeds-bool", lambda: sigprop.analyze(tiny_mlp(), (4, 8), seeds=True), r"\bseeds\b", ()),
    ("precision-unknown", lambda: sigprop.analyze(tiny_mlp(), (4, 8), precision="ultra"),
     r"\bprecision\b", ("ultra",)),
]


@pytest.fixture
def no_compile(monkeypatch):
    """Fail loudly if a case reaches the jitted engine instead of raising at the boundary."""

    def tripwire(*args, **kwargs):
        raise AssertionError("reached the jitted analysis engine: the error is raised too late")

    monkeypatch.setattr(importlib.import_module("sigprop.core.engine"), "_core", tripwire)


@pytest.mark.parametrize("call, match, also", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_boundary_error(no_compile, call, match, also):
    with pytest.raises(ValueError, match=match) as info:
        call()
    message = str(info.value)
    for text in also:
        assert text in message, f"{text!r} not in the message: {message}"


@pytest.mark.parametrize(
    "call",
    [
        lambda: sigprop.cnn("cfg_10", norm="batchnrm"),
        lambda: sigprop.mlp(2, 8, norm="batchnrm"),
        lambda: sigprop.resnet56(norm="batchnrm"),
        lambda: normalizers.make("batchnrm"),
    ],
    ids=["cnn", "mlp", "resnet56", "make"],
)
def test_unknown_normalizer_suggests_and_lists(call):
    """The message echoes the bad name, suggests 'batchnorm' and lists every known name.

    'batchnorm' appears twice: once as the suggestion and once in the list of known names."""
    with pytest.raises(ValueError, match="batchnrm") as info:
        call()
    message = str(info.value)
    assert message.count("batchnorm") >= 2, message
    for name in normalizers.names():
        assert name in message, f"{name!r} not listed: {message}"


def test_errors_do_not_depend_on_a_device_computation(no_compile):
    """A well-formed call does reach the engine (the tripwire is wired to the right function)."""
    with pytest.raises(AssertionError, match="too late"):
        sigprop.analyze(tiny_mlp(), (4, 8))
