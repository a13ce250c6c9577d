"""sigprop's probes re-implemented in PyTorch, the way the [BB] reference code measures: hooks.

The network is [BB]'s post-activation CIFAR ResNet (``resnet56`` = 3 stages x 9 basic blocks,
widths 32, 64, 128, strides 1, 2, 2) built from ``torch.nn`` modules with BatchNorm in train mode,
laid out exactly as ``sigprop.models.resnet.resnet(blocks, widths, norm="batchnorm")``:

- stem: 3x3 conv 3 -> w0 (padding 1, no bias), BatchNorm, ReLU;
- block: conv1 (3x3, stride s) - bn1 - relu1 - conv2 (3x3) - bn2, plus the shortcut (identity, or
  a 3x3 stride-s conv + BatchNorm where the shape changes), then relu_out;
- head: global average pool, linear to ``n_classes``.

Init: He normal (``kaiming_normal_``, fan_in, relu) for the convs; the classifier keeps
``nn.Linear``'s U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights, as sigprop does, with a zero bias (as
sigprop; torch's default bias is uniform too).

Probes, with the names of ``model.layer_names`` / ``model.grad_layer_names`` in sigprop:

- activation taps (``stem``, ``stage{s}/block{b}/act1``, ``.../out``): a forward hook on the ReLU
  module reduces its output to the five metrics of ``sigprop.metrics.ACT_METRICS``, each turned
  into a Python float with ``.item()`` (one host sync per value, as [BB]'s ``Activs_prober``);
- gradient taps (``stem``, ``.../conv1``, ``.../conv2``, ``.../shortcut``): a forward hook on the
  conv registers a tensor hook on its output, which records ``||d loss / d output||_F``.

Loss: mean cross-entropy against labels drawn uniformly over the classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_METRICS = (
    "activation_variance",
    "channel_squared_mean",
    "cosine_similarity",
    "stable_rank",
    "effective_rank",
)


# --------------------------------------------------------------------------------------------
# The network


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv1-bn1-relu1-conv2-bn2, plus shortcut, then relu_out ([BB]'s BasicBlock)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = _conv(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2, self.bn2 = _conv(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut_conv = self.shortcut_bn = None
        if stride != 1 or cin != cout:
            self.shortcut_conv, self.shortcut_bn = _conv(cin, cout, stride), nn.BatchNorm2d(cout)
        self.relu_out = nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return self.relu_out(y + s)


class ResNet(nn.Module):
    """A CIFAR ResNet of ``len(widths)`` stages x ``blocks`` basic blocks; ``resnet56()`` is
    ``ResNet(9, (32, 64, 128))``."""

    def __init__(self, blocks: int = 9, widths: tuple = (32, 64, 128), n_classes: int = 100):
        super().__init__()
        self.stem_conv, self.stem_bn, self.stem_relu = _conv(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU()
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*[
                BasicBlock(cin if b == 0 else w, w, (1 if i == 0 else 2) if b == 0 else 1)
                for b in range(blocks)
            ]))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(widths[-1], n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        x = self.stem_relu(self.stem_bn(self.stem_conv(x)))
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x.mean(dim=(2, 3)))

    def _blocks(self):
        for s, stage in enumerate(self.stages, start=1):
            for b, block in enumerate(stage):
                yield f"stage{s}/block{b}", block

    def act_points(self) -> list[tuple[str, nn.Module]]:
        """``(sigprop layer name, module whose output is tapped)``, in sigprop's order."""
        out = [("stem", self.stem_relu)]
        for name, block in self._blocks():
            out += [(f"{name}/act1", block.relu1), (f"{name}/out", block.relu_out)]
        return out

    def grad_points(self) -> list[tuple[str, nn.Conv2d]]:
        """``(sigprop gradient layer name, conv whose output gradient is tapped)``, in order."""
        out = [("stem", self.stem_conv)]
        for name, block in self._blocks():
            out += [(f"{name}/conv1", block.conv1), (f"{name}/conv2", block.conv2)]
            if block.shortcut_conv is not None:
                out.append((f"{name}/shortcut", block.shortcut_conv))
        return out


def resnet56(n_classes: int = 100) -> ResNet:
    return ResNet(9, (32, 64, 128), n_classes)


# --------------------------------------------------------------------------------------------
# Metrics (NCHW; M = the batch flattened to [B, D], M_hat its unit rows, G = M_hat M_hat^T)


# [BB]'s own set: variance, cosine similarity, stable rank (and gradient norms)
BB_METRICS = ("activation_variance", "cosine_similarity", "stable_rank")


def activation_metrics(x: torch.Tensor, which=ACT_METRICS) -> list[float]:
    """The :data:`ACT_METRICS` of one activation, each synced to the host with ``.item()``;
    those not in ``which`` are NaN (not computed).

    Variance is the biased one (as sigprop; [BB] used torch's unbiased ``var``). Column order of
    ``M`` (NCHW here, NHWC in sigprop) does not change any of these."""
    b = x.shape[0]
    out = dict.fromkeys(ACT_METRICS, float("nan"))
    if "activation_variance" in which:
        out["activation_variance"] = x.var(dim=(0, 2, 3), unbiased=False).mean().item()
    if "channel_squared_mean" in which:
        out["channel_squared_mean"] = x.mean(dim=(0, 2, 3)).square().mean().item()
    m = x.reshape(b, -1)
    if {"cosine_similarity", "stable_rank"} & set(which):
        m_hat = m / m.norm(dim=1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
        g = m_hat @ m_hat.T
        if "cosine_similarity" in which:
            out["cosine_similarity"] = ((g.sum(dim=1) - g.diagonal()) / (b - 1)).mean().item()
        if "stable_rank" in which:
            out["stable_rank"] = (g.trace() / torch.linalg.matrix_norm(g, ord=2)).item()
    if "effective_rank" in which:
        sigma = torch.linalg.svdvals(m)
        p = sigma / sigma.sum()
        p = p[p > 0]
        out["effective_rank"] = torch.exp(-(p * p.log()).sum()).item()
    return [out[k] for k in ACT_METRICS]


class Probes:
    """Hooks on ``model``: ``acts[name]`` (five floats) and ``grads[name]`` (a float) per pass."""

    def __init__(self, model: ResNet, which=ACT_METRICS):
        self.which = tuple(which)
        self.act_names = [n for n, _ in model.act_points()]
        self.grad_names = [n for n, _ in model.grad_points()]
        self.acts: dict[str, list[float]] = {}
        self.grads: dict[str, float] = {}
        self._handles = [m.register_forward_hook(self._act_hook(n)) for n, m in model.act_points()]
        self._handles += [m.register_forward_hook(self._conv_hook(n)) for n, m in model.grad_points()]

    def _act_hook(self, name):
        def hook(module, inputs, output):
            self.acts[name] = activation_metrics(output.detach(), self.which)
        return hook

    def _conv_hook(self, name):
        def record(grad):
            self.grads[name] = grad.norm().item()

        def hook(module, inputs, output):
            if output.requires_grad:
                output.register_hook(record)
        return hook

    def remove(self):
        for h in self._handles:
            h.remove()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``([layers, 5] activation metrics, [grad layers] gradient norms)`` in sigprop order."""
        return (np.array([self.acts[n] for n in self.act_names], dtype=np.float64),
                np.array([self.grads[n] for n in self.grad_names], dtype=np.float64))


def analyze(model: ResNet, probes: Probes, x: torch.Tensor, labels: torch.Tensor,
            param_grads: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass and one backward pass of ``model`` (train mode) with ``probes`` attached.

    ``param_grads=True`` is [BB]'s ``loss.backward()`` with trainable parameters (weight gradients
    computed too); ``False`` freezes the parameters and differentiates w.r.t. the input only,
    like sigprop, which needs no weight gradients."""
    model.train()
    for p in model.parameters():
        p.requires_grad_(param_grads)
        p.grad = None
    x = x.detach().requires_grad_(not param_grads)
    probes.acts.clear()
    probes.grads.clear()
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return probes.arrays()


# --------------------------------------------------------------------------------------------
# Weights from sigprop


def load_sigprop_params(model: ResNet, params) -> ResNet:
    """Copy the params of ``sigprop.models.resnet.resnet(blocks, widths, norm="batchnorm")``
    (``variables['params']``, scanned or not) into ``model``: conv kernels HWIO -> OIHW, BatchNorm
    scale/bias -> weight/bias, classifier kernel ``[in, out]`` -> ``[out, in]``.

    Flax names the submodules of a block in creation order: ``Conv_0``/``BatchNorm_0`` = conv1/bn1,
    ``Conv_1``/``BatchNorm_1`` = conv2/bn2, ``Conv_2``/``BatchNorm_2`` = the shortcut."""
    from sigprop.taps import probe  # sigprop's own unstacking of nn.scan params

    tree = probe.unstack(params)

    def conv(mod: nn.Conv2d, p):
        k = np.asarray(p["kernel"])
        assert mod.weight.shape == (k.shape[3], k.shape[2], k.shape[0], k.shape[1]), (mod, k.shape)
        mod.weight.copy_(torch.from_numpy(np.array(k.transpose(3, 2, 0, 1), order="C")))

    def bn(mod: nn.BatchNorm2d, p):
        mod.weight.copy_(torch.from_numpy(np.array(p["scale"])))
        mod.bias.copy_(torch.from_numpy(np.array(p["bias"])))

    with torch.no_grad():
        conv(model.stem_conv, tree["stem"]["Conv_0"])
        bn(model.stem_bn, tree["stem"]["BatchNorm_0"])
        for name, block in model._blocks():
            stage, blk = name.split("/")
            p = tree[stage][blk]
            conv(block.conv1, p["Conv_0"]), bn(block.bn1, p["BatchNorm_0"])
            conv(block.conv2, p["Conv_1"]), bn(block.bn2, p["BatchNorm_1"])
            if block.shortcut_conv is not None:
                conv(block.shortcut_conv, p["Conv_2"]), bn(block.shortcut_bn, p["BatchNorm_2"])
            elif "Conv_2" in p:
                raise ValueError(f"{name}: sigprop has a shortcut conv, the torch model does not")
        model.classifier.weight.copy_(torch.from_numpy(np.asarray(tree["classifier"]["kernel"]).T.copy()))
        model.classifier.bias.copy_(torch.from_numpy(np.array(tree["classifier"]["bias"])))
    return model


def nhwc_to_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(np.asarray(x, dtype=np.float32).transpose(0, 3, 1, 2), order="C"))


def relative_deviation(a, b) -> np.ndarray:
    """``|a - b| / max(|b|, 1e-12)`` elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-12)


__all__ = ["ACT_METRICS", "BB_METRICS", "BasicBlock", "Probes", "ResNet", "activation_metrics", "analyze",
           "load_sigprop_params", "nhwc_to_nchw", "relative_deviation", "resnet56"]
