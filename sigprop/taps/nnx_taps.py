"""Taps for flax nnx models: observe selected submodules of a *copy* of the user's model.

The engine runs an nnx model as ``nnx.merge(graphdef, state)`` inside its traced function, so
the merged object is its own: on it, each selected submodule's class is swapped for a subclass
whose ``__call__`` passes the output through :class:`Context` (activation records, gradient
probes), and every module carries the context so that :func:`tap` inside user code finds it.
The user's instance is never changed.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from flax import nnx

from sigprop.taps import attention, probe

_CTX, _PATH = "_sigprop_ctx", "_sigprop_path"


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


def modules(model) -> list[tuple[str, Any]]:
    """``[(path, module)]`` of every nnx module in ``model``'s graph (the root is ``""``)."""
    return [(path_name(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)]


class Context:
    """What the taps of one traced run do.

    ``needs``: the activation records wanted (``sigprop.metrics.NEEDS``); ``probes``:
    ``{path: zero [2]}`` for the gradient taps; ``pair``: the pair pass (under the pair vmap);
    ``record_calls``: discovery, record every module call's exit in order; ``attns``: the flax
    attention modules observed (their ``attention_fn`` wrapped, :mod:`sigprop.taps.attention`)."""

    def __init__(self, acts=(), grads=(), needs=frozenset(), probes=None, pair=False,
                 record_calls=False, attns=(), norm_probes=None, norm_tap=None):
        self.acts, self.grads, self.attns = frozenset(acts), frozenset(grads), frozenset(attns)
        self.needs, self.probes, self.pair = needs, probes or {}, pair
        # the normalizers' gradient-noise taps: {path: zero [4]}, and
        # norm_tap(module, args, kwargs, y, probe) -> y (sigprop.core.norm_taps)
        self.norm_probes, self.norm_tap = norm_probes or {}, norm_tap
        self.record_calls = record_calls
        self.calls: list[tuple[str, Any]] = []  # discovery: (path, module) at each exit
        self.explicit: list[tuple[str, str]] = []  # discovery: (name, kind) of sigprop.tap calls
        self.records: dict[str, dict] = {}  # activation name -> {leaf key: record}
        self.branches: dict[str, Any] = {}
        self.attention: dict[str, dict] = {}  # attention name -> {leaf key: record}

    def _act(self, name, y):
        if self.needs:
            self.records[name] = probe.record_activation(y, self.needs, where=name)
        return y

    def _attention(self, name, probs, logits, mask):
        if self.needs & {"attention", "attention_logits"}:
            self.attention[name] = probe.record_attention(probs, logits, mask, self.needs, name)
        return probs

    def _grad(self, name, y):
        if name in self.probes:
            return probe.grad_probe(y, self.probes[name], pair=self.pair)
        return y

    def module_output(self, module, y, args=(), kwargs=None):
        path = vars(module)[_PATH]
        if self.record_calls:
            self.calls.append((path, module))
        if not isinstance(y, jax.Array):
            return y
        if path in self.norm_probes:
            y = self.norm_tap(module, args, kwargs or {}, y, self.norm_probes[path])
        if path in self.grads:
            y = self._grad(path, y)
        if path in self.acts:
            y = self._act(path, y)
        return y

    def explicit_tap(self, module, x, name, kind, logits=None, mask=None):
        full = f"{vars(module)[_PATH]}/{name}".lstrip("/")
        if self.record_calls:
            self.explicit.append((full, kind))
            self.calls.append((full, None))
        if kind in ("gradient", "grad"):
            return self._grad(full, x)
        if kind == "attention":
            return self._attention(full, x, logits, mask)
        if kind == "branch":
            if "branch" in self.needs:
                self.branches[full] = probe.record_branch(x)
            return x
        return self._act(full, x)


@functools.cache
def _tapped(cls):
    """A subclass of ``cls`` whose ``__call__`` reports its output to the module's context."""

    def __call__(self, *args, **kwargs):
        y = cls.__call__(self, *args, **kwargs)
        ctx = vars(self).get(_CTX)
        return y if ctx is None else ctx.module_output(self, y, args, kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


def install(model, ctx: Context, paths) -> None:
    """Give every module of ``model`` (a merged copy) the context; swap the classes of the
    modules at ``paths`` (all of them when None) for their tapped subclass, and wrap the
    ``attention_fn`` of the attention modules at ``ctx.attns``."""
    for path, module in modules(model):
        vars(module)[_CTX] = ctx
        vars(module)[_PATH] = path
        if (paths is None or path in paths) and callable(getattr(type(module), "__call__", None)):
            module.__class__ = _tapped(type(module))
        if path in ctx.attns:
            vars(module)["attention_fn"] = attention.observed(
                vars(module)["attention_fn"],
                functools.partial(ctx._attention, path))


def tap(module, x, name: str, kind: str, logits=None, mask=None):
    """:func:`sigprop.tap` for an nnx module: the identity unless the engine runs the model."""
    ctx = vars(module).get(_CTX) if hasattr(module, "__dict__") else None
    if ctx is None:
        return x
    return ctx.explicit_tap(module, x, name, kind, logits, mask)


__all__ = ["Context", "install", "modules", "path_name", "tap"]
