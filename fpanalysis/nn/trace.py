"""Trace a PyTorch model into a flat list of supported steps (the torch adapter's front end).

:func:`trace_model` runs ``torch.fx`` symbolic tracing and turns every graph node into a
:class:`Step`: one primitive operation the analysis knows how to execute three ways (fp32,
float64, emulated low precision) and how to bound.  ``nn.MultiheadAttention`` (a leaf module
for fx) is decomposed here into its primitive steps, in the order
``torch.nn.functional.multi_head_attention_forward`` computes them: input projections, heads,
``q * d**-0.5``, ``q k^T``, softmax, ``P v``, output projection.

A model with anything else fails with a ``ValueError`` naming the layer's path and type and
listing what is supported.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU())
>>> [(s.name, s.kind) for s in trace_model(m).steps]
[('input_1', 'input'), ('0', 'shape'), ('1', 'linear'), ('2', 'relu'), ('output', 'output')]
>>> trace_model(nn.Sequential(nn.Upsample(scale_factor=2)))
Traceback (most recent call last):
...
ValueError: layer '0' (nn.Upsample) is not supported; supported layers are: ...
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["STEP_KINDS", "SUPPORTED_LAYERS", "Ref", "Step", "TracedModel", "trace_model"]

#: Kinds of steps, each with its own executor and bound (see fpanalysis.analysis.network_bounds).
STEP_KINDS = (
    "input", "param", "output", "size",
    "linear", "conv2d", "matmul",
    "batchnorm", "layernorm",
    "relu", "gelu", "tanh", "sigmoid", "silu",
    "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "mean", "sum",
    "softmax", "add", "sub", "mul", "affine",
    "shape", "cat", "identity",
)

_MODULE_KINDS: dict[type, str] = {
    nn.Linear: "linear",
    nn.Conv2d: "conv2d",
    nn.BatchNorm1d: "batchnorm",
    nn.BatchNorm2d: "batchnorm",
    nn.LayerNorm: "layernorm",
    nn.ReLU: "relu",
    nn.GELU: "gelu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.MaxPool2d: "maxpool2d",
    nn.AvgPool2d: "avgpool2d",
    nn.AdaptiveAvgPool2d: "adaptive_avgpool2d",
    nn.Flatten: "shape",
    nn.Unflatten: "shape",
    nn.Dropout: "identity",
    nn.Identity: "identity",
    nn.Softmax: "softmax",
    nn.MultiheadAttention: "mha",
}

#: Layers a model may contain (besides the functional and method forms listed in the docs).
SUPPORTED_LAYERS = tuple(sorted({f"nn.{t.__name__}" for t in _MODULE_KINDS}))

_FUNCTIONS_TEXT = (
    "functions F.relu/gelu/silu/softmax/linear/conv2d/max_pool2d/avg_pool2d/adaptive_avg_pool2d/dropout, "
    "torch.relu/tanh/sigmoid/softmax/flatten/cat/matmul/mean/sum/add/mul/transpose/permute/reshape, "
    "operators + - * / @ (tensors, or a tensor and a constant), indexing, and the tensor methods "
    "view/reshape/flatten/unflatten/permute/transpose/contiguous/squeeze/unsqueeze/mean/sum/softmax/size/"
    "relu/tanh/sigmoid"
)


@dataclass(frozen=True)
class Ref:
    """A reference to the output of another step inside a step's argument template."""

    name: str


@dataclass
class Step:
    """One primitive operation of a traced model.

    Attributes
    ----------
    name : str
        Unique name (the fx node name, or ``<module path>.<part>`` for decomposed modules).
    kind : str
        One of :data:`STEP_KINDS`.
    inputs : tuple of str
        Names of the steps whose outputs this step reads (tensors, or sizes for ``size``).
    attrs : dict
        Kind-specific data: fp32 parameters (``weight``, ``bias``, ...), hyper-parameters,
        and for ``shape`` a callable ``fn(tensor, *args)`` with an argument template.
    path : str
        Where the step comes from, in the user's terms: a module path (``features.3``), or the
        module path in whose ``forward`` a function was called plus the function.
    origin : str
        The layer type or function (``nn.Conv2d``, ``torch.flatten``, ``x.view``, ``operator.add``).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    origin: str = ""

    def resolve(self, template: Any, values: dict[str, Any]) -> Any:
        """Replace :class:`Ref` objects in ``template`` by ``values[ref.name]``."""
        if isinstance(template, Ref):
            return values[template.name]
        if isinstance(template, (tuple, list)):
            return type(template)(self.resolve(t, values) for t in template)
        if isinstance(template, dict):
            return {k: self.resolve(v, values) for k, v in template.items()}
        return template

    def describe(self) -> str:
        return f"{self.path or self.name} ({self.origin or self.kind})"


@dataclass
class TracedModel:
    """The steps of a model in execution order (inputs always before their users)."""

    steps: list[Step]
    output: str
    input: str

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def last_use(self) -> dict[str, int]:
        """Index of the last step reading each step's output (for freeing memory)."""
        last: dict[str, int] = {}
        for i, s in enumerate(self.steps):
            for name in s.inputs:
                last[name] = i
        return last


# ------------------------------------------------------------------------------------------
# The tracer: remembers in which module's forward every function call happens
# ------------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self._scope: list[str] = []

    def call_module(self, m: nn.Module, forward: Callable, args: Any, kwargs: Any) -> Any:
        self._scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope.pop()

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):  # type: ignore[override]
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["fpa_scope"] = self._scope[-1] if self._scope else ""
        return node


def _unsupported_layer(path: str, module: nn.Module, why: str = "") -> ValueError:
    t = type(module)
    tname = f"nn.{t.__name__}" if t.__module__.startswith("torch.nn") else f"{t.__module__}.{t.__name__}"
    extra = f" ({why})" if why else ""
    return ValueError(
        f"layer '{path}' ({tname}) is not supported{extra}; supported layers are: "
        f"{', '.join(SUPPORTED_LAYERS)}; and {_FUNCTIONS_TEXT}"
    )


def _unsupported_call(where: str, what: str, why: str = "") -> ValueError:
    extra = f" ({why})" if why else ""
    return ValueError(
        f"operation {what} in '{where or '<model>'}' is not supported{extra}; supported layers are: "
        f"{', '.join(SUPPORTED_LAYERS)}; and {_FUNCTIONS_TEXT}"
    )


def _fname(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if "functional" in mod:
        return f"F.{name}"
    return f"torch.{name}"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _shape_fn(fn: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"fn": fn, "args": args, "kwargs": kwargs}


_ACTIVATION_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu",
    F.gelu: "gelu",
    torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.silu: "silu",
}
_ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_SHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
                  "squeeze", "unsqueeze", "expand", "t"}
_SHAPE_FUNCS = {torch.flatten: torch.flatten, torch.reshape: torch.reshape, torch.permute: torch.permute,
                torch.transpose: torch.transpose, torch.squeeze: torch.squeeze,
                torch.unsqueeze: torch.unsqueeze}


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.steps: list[Step] = []
        self.alias: dict[str, Any] = {}  # fx node name -> step name, or tuple of them (module outputs)
        self.kinds: dict[str, str] = {}  # step name -> kind
        self.input: str | None = None
        self.output: str | None = None

    # -- helpers ------------------------------------------------------------------------
    def add(self, step: Step) -> str:
        if step.name in self.kinds:  # a module called more than once
            k = 2
            while f"{step.name}:{k}" in self.kinds:
                k += 1
            step.name = f"{step.name}:{k}"
        self.steps.append(step)
        self.kinds[step.name] = step.kind
        return step.name

    def ref(self, a: Any, where: str) -> Any:
        """fx argument -> template with Ref objects (node outputs) and constants."""
        if isinstance(a, fx.Node):
            target = self.alias[a.name]
            if isinstance(target, tuple):
                return tuple(Ref(t) if t is not None else None for t in target)
            return Ref(target)
        if isinstance(a, (tuple, list)):
            return type(a)(self.ref(x, where) for x in a)
        if isinstance(a, dict):
            return {k: self.ref(v, where) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.ref(a.start, where), self.ref(a.stop, where), self.ref(a.step, where))
        if isinstance(a, torch.Tensor):
            raise _unsupported_call(where, "with a tensor constant argument")
        return a

    def is_tensor(self, a: Any) -> bool:
        return isinstance(a, Ref) and self.kinds.get(a.name) != "size"

    @staticmethod
    def refs_in(t: Any) -> tuple[str, ...]:
        out: list[str] = []

        def walk(x: Any) -> None:
            if isinstance(x, Ref):
                out.append(x.name)
            elif isinstance(x, (tuple, list)):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):
                for y in x.values():
                    walk(y)
            elif isinstance(x, slice):
                walk(x.start), walk(x.stop), walk(x.step)

        walk(t)
        return tuple(dict.fromkeys(out))

    def shape_step(self, name: str, x: Ref, fn: Callable, args: Any, kwargs: Any, path: str, origin: str) -> str:
        inputs = (x.name,) + tuple(r for r in self.refs_in((args, kwargs)) if r != x.name)
        return self.add(Step(name, "shape", inputs, _shape_fn(fn, *args, **kwargs) | {"x": x}, path, origin))

    # -- nodes ----------------------------------------------------------------------------
    def node(self, n: fx.Node) -> None:
        scope = n.meta.get("fpa_scope", "")
        if n.op == "placeholder":
            if self.input is not None:
                raise ValueError("models with more than one input are not supported (found "
                                 f"inputs '{self.input}' and '{n.name}')")
            self.input = self.add(Step(n.name, "input", (), {}, n.name, "input"))
            self.alias[n.name] = n.name
        elif n.op == "get_attr":
            value = self.gm
            for part in str(n.target).split("."):
                value = getattr(value, part)
            if not isinstance(value, torch.Tensor):
                raise _unsupported_call(scope, f"attribute '{n.target}'", "not a tensor")
            self.alias[n.name] = self.add(Step(n.name, "param", (), {"value": value.detach()}, str(n.target),
                                               "parameter"))
        elif n.op == "call_module":
            self.module(n, str(n.target), self.modules[str(n.target)])
        elif n.op == "call_function":
            self.function(n, scope)
        elif n.op == "call_method":
            self.method(n, scope)
        elif n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node) or isinstance(self.alias.get(out.name), tuple):
                raise ValueError("the model must return one tensor (the logits); it returns "
                                 f"{type(out).__name__}")
            src = self.alias[out.name]
            if self.kinds.get(src) == "size":
                raise ValueError("the model must return one tensor (the logits)")
            self.output = self.add(Step("output", "output", (src,), {}, "output", "output"))
        else:  # pragma: no cover - fx has no other node kinds
            raise ValueError(f"unexpected fx node {n.op}")

    def module(self, n: fx.Node, path: str, m: nn.Module) -> None:
        kind = _MODULE_KINDS.get(type(m))
        if kind is None:
            raise _unsupported_layer(path, m)
        args = [self.ref(a, path) for a in n.args]
        kwargs = {k: self.ref(v, path) for k, v in n.kwargs.items()}
        origin = f"nn.{type(m).__name__}"
        if kind == "mha":
            self.alias[n.name] = self.mha(n.name, path, m, args, kwargs)
            return
        if len(args) != 1 or kwargs or not self.is_tensor(args[0]):
            raise _unsupported_layer(path, m, "called with more than one tensor argument")
        x: Ref = args[0]
        a: dict[str, Any] = {}
        if kind == "linear":
            a = {"weight": m.weight.detach(), "bias": None if m.bias is None else m.bias.detach()}
        elif kind == "conv2d":
            if m.padding_mode != "zeros":
                raise _unsupported_layer(path, m, f"padding_mode={m.padding_mode!r}; only 'zeros'")
            pad = m.padding
            if isinstance(pad, str):
                if pad == "valid":
                    pad = (0, 0)
                else:  # 'same' (stride 1): symmetric only for odd effective kernels
                    eff = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
                    if any(e % 2 for e in eff):
                        raise _unsupported_layer(path, m, "padding='same' with an even kernel")
                    pad = tuple(e // 2 for e in eff)
            a = {"weight": m.weight.detach(), "bias": None if m.bias is None else m.bias.detach(),
                 "stride": _pair(m.stride), "padding": _pair(pad), "dilation": _pair(m.dilation),
                 "groups": int(m.groups)}
        elif kind == "batchnorm":
            if m.running_mean is None or m.running_var is None:
                raise _unsupported_layer(path, m, "track_running_stats=False: inference would use batch statistics")
            a = {"weight": None if m.weight is None else m.weight.detach(),
                 "bias": None if m.bias is None else m.bias.detach(),
                 "running_mean": m.running_mean.detach(), "running_var": m.running_var.detach(),
                 "eps": float(m.eps)}
        elif kind == "layernorm":
            a = {"normalized_shape": tuple(m.normalized_shape),
                 "weight": None if m.weight is None else m.weight.detach(),
                 "bias": None if m.bias is None else m.bias.detach(), "eps": float(m.eps)}
        elif kind == "gelu":
            a = {"approximate": m.approximate}
        elif kind == "maxpool2d":
            if m.return_indices:
                raise _unsupported_layer(path, m, "return_indices=True")
            a = {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                 "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}
        elif kind == "avgpool2d":
            if m.divisor_override is not None:
                raise _unsupported_layer(path, m, "divisor_override")
            a = {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                 "padding": _pair(m.padding), "ceil_mode": bool(m.ceil_mode),
                 "count_include_pad": bool(m.count_include_pad)}
        elif kind == "adaptive_avgpool2d":
            a = {"output_size": m.output_size}
        elif kind == "softmax":
            if m.dim is None:
                raise _unsupported_layer(path, m, "dim=None")
            a = {"dim": int(m.dim)}
        elif kind == "shape":
            if isinstance(m, nn.Flatten):
                self.alias[n.name] = self.shape_step(path, x, torch.flatten, (m.start_dim, m.end_dim), {}, path, origin)
            else:
                self.alias[n.name] = self.shape_step(path, x, torch.unflatten, (m.dim, tuple(m.unflattened_size)),
                                                     {}, path, origin)
            return
        self.alias[n.name] = self.add(Step(path, kind, (x.name,), a, path, origin))

    def function(self, n: fx.Node, scope: str) -> None:
        t = n.target
        fname = _fname(t)
        where = scope
        name = n.name
        path = f"{scope}.{n.name}" if scope else n.name
        args = [self.ref(a, where) for a in n.args]
        kwargs = {k: self.ref(v, where) for k, v in n.kwargs.items()}
        tens = [a for a in args if self.is_tensor(a)]

        if t is operator.getitem:
            base = args[0]
            if isinstance(base, tuple):  # output tuple of a decomposed module
                idx = args[1]
                target = base[idx]
                if target is None:
                    raise _unsupported_call(where, "using the attention weights", "need_weights=False")
                self.alias[n.name] = target.name
                return
            if not self.is_tensor(base):
                raise _unsupported_call(where, f"{fname} on a non-tensor")
            self.alias[n.name] = self.shape_step(name, base, operator.getitem, (args[1],), {}, path, "indexing")
            return
        if t in _ACTIVATION_FUNCS and len(tens) == 1 and args and args[0] is tens[0]:
            kind = _ACTIVATION_FUNCS[t]
            a = {"approximate": kwargs.get("approximate", "none")} if kind == "gelu" else {}
            self.alias[n.name] = self.add(Step(name, kind, (tens[0].name,), a, path, fname))
            return
        if t in _SHAPE_FUNCS and self.is_tensor(args[0]):
            self.alias[n.name] = self.shape_step(name, args[0], _SHAPE_FUNCS[t], tuple(args[1:]), kwargs, path, fname)
            return
        if t in (F.dropout,) and self.is_tensor(args[0]):
            self.alias[n.name] = self.add(Step(name, "identity", (args[0].name,), {}, path, fname))
            return
        if t in (torch.softmax, F.softmax) and self.is_tensor(args[0]):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None or kwargs.get("dtype") is not None or (len(args) > 2 and args[2] is not None):
                raise _unsupported_call(where, f"{fname}", "needs an explicit dim and no dtype")
            self.alias[n.name] = self.add(Step(name, "softmax", (args[0].name,), {"dim": int(dim)}, path, fname))
            return
        if t is torch.cat or t is torch.concat:
            seq = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if not isinstance(seq, (tuple, list)) or not all(self.is_tensor(s) for s in seq):
                raise _unsupported_call(where, fname, "needs a list of tensors")
            self.alias[n.name] = self.add(Step(name, "cat", tuple(s.name for s in seq), {"dim": int(dim)}, path, fname))
            return
        if t in (torch.matmul, operator.matmul, torch.bmm):
            if len(tens) != 2 or len(args) != 2:
                raise _unsupported_call(where, fname, "needs two tensors")
            self.alias[n.name] = self.add(Step(name, "matmul", (args[0].name, args[1].name), {}, path, fname))
            return
        if t in (torch.mean, torch.sum):
            self.mean_step(n, args, kwargs, path, fname, "mean" if t is torch.mean else "sum")
            return
        if t is F.linear:
            self.functional_param(n, "linear", args, kwargs, path, fname)
            return
        if t is F.conv2d:
            self.functional_param(n, "conv2d", args, kwargs, path, fname)
            return
        if t in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d):
            self.functional_pool(n, t, args, kwargs, path, fname)
            return
        if t in (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                 operator.neg, torch.neg, operator.iadd, operator.imul):
            self.arith(n, t, args, kwargs, path, fname, where)
            return
        raise _unsupported_call(where, f"{fname}")

    def method(self, n: fx.Node, scope: str) -> None:
        m = str(n.target)
        path = f"{scope}.{n.name}" if scope else n.name
        args = [self.ref(a, scope) for a in n.args]
        kwargs = {k: self.ref(v, scope) for k, v in n.kwargs.items()}
        x = args[0]
        if not self.is_tensor(x):
            raise _unsupported_call(scope, f"method .{m}() on a non-tensor")
        origin = f"x.{m}"
        if m == "size":
            self.alias[n.name] = self.add(Step(n.name, "size", self.refs_in(args),
                                               {"fn": torch.Tensor.size, "args": tuple(args), "kwargs": kwargs},
                                               path, origin))
        elif m in _SHAPE_METHODS:
            fn = getattr(torch.Tensor, m)
            self.alias[n.name] = self.shape_step(n.name, x, fn, tuple(args[1:]), kwargs, path, origin)
        elif m in _ACTIVATION_METHODS:
            self.alias[n.name] = self.add(Step(n.name, _ACTIVATION_METHODS[m], (x.name,), {}, path, origin))
        elif m in ("mean", "sum"):
            self.mean_step(n, args, kwargs, path, origin, m)
        elif m == "softmax":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None:
                raise _unsupported_call(scope, origin, "needs an explicit dim")
            self.alias[n.name] = self.add(Step(n.name, "softmax", (x.name,), {"dim": int(dim)}, path, origin))
        elif m in ("add", "sub", "mul", "div"):
            t = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[m]
            self.arith(n, t, args, kwargs, path, origin, scope)
        else:
            raise _unsupported_call(scope, f"method .{m}()")

    # -- composite helpers ---------------------------------------------------------------------
    def mean_step(self, n: fx.Node, args: list, kwargs: dict, path: str, origin: str, kind: str = "mean") -> None:
        x = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
        if kwargs.get("dtype") is not None:
            raise _unsupported_call(path, origin, "dtype argument")
        dims = None if dim is None else ((int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim))
        if dims is None:
            raise _unsupported_call(path, origin, "a reduction over all dimensions mixes the inputs of a batch")
        self.alias[n.name] = self.add(Step(n.name, kind, (x.name,), {"dim": dims, "keepdim": keepdim}, path, origin))

    def functional_param(self, n: fx.Node, kind: str, args: list, kwargs: dict, path: str, origin: str) -> None:
        names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
        bound = dict(zip(names, args)) | kwargs
        for key in ("weight", "bias"):
            v = bound.get(key)
            if v is not None and not (isinstance(v, Ref) and self.kinds.get(v.name) == "param"):
                raise _unsupported_call(path, origin, f"{key} must be a parameter of the model")
        w = self.step_of(bound["weight"]).attrs["value"]
        b = bound.get("bias")
        b = None if b is None else self.step_of(b).attrs["value"]
        a: dict[str, Any] = {"weight": w, "bias": b}
        if kind == "conv2d":
            pad = bound.get("padding", 0)
            if isinstance(pad, str):
                raise _unsupported_call(path, origin, "string padding")
            a |= {"stride": _pair(bound.get("stride", 1)), "padding": _pair(pad),
                  "dilation": _pair(bound.get("dilation", 1)), "groups": int(bound.get("groups", 1))}
        self.alias[n.name] = self.add(Step(n.name, kind, (bound["input"].name,), a, path, origin))

    def functional_pool(self, n: fx.Node, t: Any, args: list, kwargs: dict, path: str, origin: str) -> None:
        x = args[0]
        if t is F.adaptive_avg_pool2d:
            out = kwargs.get("output_size", args[1] if len(args) > 1 else None)
            self.alias[n.name] = self.add(Step(n.name, "adaptive_avgpool2d", (x.name,), {"output_size": out}, path, origin))
            return
        if t is F.max_pool2d:
            names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
        else:
            names = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]
        b = dict(zip(names, args)) | kwargs
        k = _pair(b["kernel_size"])
        stride = b.get("stride") or k
        a: dict[str, Any] = {"kernel_size": k, "stride": _pair(stride), "padding": _pair(b.get("padding", 0)),
                             "ceil_mode": bool(b.get("ceil_mode", False))}
        if t is F.max_pool2d:
            if b.get("return_indices"):
                raise _unsupported_call(path, origin, "return_indices=True")
            a["dilation"] = _pair(b.get("dilation", 1))
            kind = "maxpool2d"
        else:
            if b.get("divisor_override") is not None:
                raise _unsupported_call(path, origin, "divisor_override")
            a["count_include_pad"] = bool(b.get("count_include_pad", True))
            kind = "avgpool2d"
        self.alias[n.name] = self.add(Step(n.name, kind, (x.name,), a, path, origin))

    def step_of(self, r: Ref) -> Step:
        for s in reversed(self.steps):
            if s.name == r.name:
                return s
        raise KeyError(r.name)

    def arith(self, n: fx.Node, t: Any, args: list, kwargs: dict, path: str, origin: str, where: str) -> None:
        if kwargs.get("alpha", 1) != 1 or kwargs.get("out") is not None:
            raise _unsupported_call(where, origin, "alpha/out arguments")
        op = {operator.iadd: "add", operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
              operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "div",
              operator.neg: "neg", torch.neg: "neg"}[t]
        if len(args) < 2:
            args = args + [kwargs.get("other")] if op != "neg" else args
        if op == "neg":
            x = args[0]
            self.alias[n.name] = self.add(Step(n.name, "affine", (x.name,), {"scale": -1.0, "shift": 0.0, "div": None},
                                               path, origin))
            return
        a, b = args[0], args[1]
        ta, tb = self.is_tensor(a), self.is_tensor(b)
        if ta and tb:
            if op == "div":
                raise _unsupported_call(where, origin, "division of two tensors")
            self.alias[n.name] = self.add(Step(n.name, op, (a.name, b.name), {}, path, origin))
            return
        if not (ta or tb):  # arithmetic on sizes (ints), e.g. view(b, c * h * w)
            if isinstance(a, Ref) or isinstance(b, Ref):
                fn = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[op]
                self.alias[n.name] = self.add(Step(n.name, "size", self.refs_in((a, b)),
                                                   {"fn": fn, "args": (a, b), "kwargs": {}}, path, origin))
                return
            raise _unsupported_call(where, origin, "no tensor operand")
        x, c = (a, b) if ta else (b, a)
        if not isinstance(c, (int, float)) or isinstance(c, bool):
            raise _unsupported_call(where, origin, f"operand of type {type(c).__name__}")
        c = float(c)
        if op == "add":
            a2 = {"scale": 1.0, "shift": c, "div": None}
        elif op == "sub":
            a2 = {"scale": 1.0, "shift": -c, "div": None} if ta else {"scale": -1.0, "shift": c, "div": None}
        elif op == "mul":
            a2 = {"scale": c, "shift": 0.0, "div": None}
        else:
            if not ta:
                raise _unsupported_call(where, origin, "a constant divided by a tensor")
            if c == 0.0:
                raise _unsupported_call(where, origin, "division by zero")
            a2 = {"scale": 1.0 / c, "shift": 0.0, "div": c}
        self.alias[n.name] = self.add(Step(n.name, "affine", (x.name,), a2, path, origin))

    def mha(self, name: str, path: str, m: nn.MultiheadAttention, args: list, kwargs: dict) -> tuple:
        """Decompose ``nn.MultiheadAttention`` into primitive steps; returns (output, weights)."""
        names = ["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                 "average_attn_weights", "is_causal"]
        b = dict(zip(names, args)) | kwargs
        for opt in ("key_padding_mask", "attn_mask"):
            if b.get(opt) is not None:
                raise _unsupported_layer(path, m, f"{opt} is not supported")
        if b.get("is_causal"):
            raise _unsupported_layer(path, m, "is_causal=True")
        if m.bias_k is not None or m.add_zero_attn:
            raise _unsupported_layer(path, m, "add_bias_kv / add_zero_attn")
        q_in, k_in, v_in = b["query"], b["key"], b["value"]
        if not all(self.is_tensor(r) for r in (q_in, k_in, v_in)):
            raise _unsupported_layer(path, m, "query/key/value must be tensors")
        E, h = m.embed_dim, m.num_heads
        d = E // h
        if m._qkv_same_embed_dim:
            W = m.in_proj_weight.detach()
            Wq, Wk, Wv = W[:E], W[E:2 * E], W[2 * E:]
        else:
            Wq, Wk, Wv = m.q_proj_weight.detach(), m.k_proj_weight.detach(), m.v_proj_weight.detach()
        if m.in_proj_bias is not None:
            bq, bk, bv = m.in_proj_bias.detach()[:E], m.in_proj_bias.detach()[E:2 * E], m.in_proj_bias.detach()[2 * E:]
        else:
            bq = bk = bv = None
        o = "nn.MultiheadAttention"

        def sh(nm: str, x: str, fn: Callable, *a: Any) -> str:
            return self.add(Step(f"{path}.{nm}", "shape", (x,), _shape_fn(fn, *a) | {"x": Ref(x)}, f"{path}.{nm}", o))

        def bf(x: str, nm: str) -> str:  # to (batch, length, E)
            return x if m.batch_first else sh(nm, x, torch.transpose, 0, 1)

        q0, k0, v0 = bf(q_in.name, "q_in"), bf(k_in.name, "k_in"), bf(v_in.name, "v_in")
        q = self.add(Step(f"{path}.q_proj", "linear", (q0,), {"weight": Wq, "bias": bq}, f"{path}.q_proj", o))
        k = self.add(Step(f"{path}.k_proj", "linear", (k0,), {"weight": Wk, "bias": bk}, f"{path}.k_proj", o))
        v = self.add(Step(f"{path}.v_proj", "linear", (v0,), {"weight": Wv, "bias": bv}, f"{path}.v_proj", o))
        heads = (h, d)
        qh = sh("q_heads", q, _split_heads, heads)
        kt = sh("k_heads_t", k, _split_heads_t, heads)
        vh = sh("v_heads", v, _split_heads, heads)
        qs = self.add(Step(f"{path}.q_scaled", "affine", (qh,), {"scale": math.sqrt(1.0 / float(d)), "shift": 0.0,
                                                                  "div": None}, f"{path}.q_scaled", o))
        sc = self.add(Step(f"{path}.scores", "matmul", (qs, kt), {}, f"{path}.scores", o))
        p = self.add(Step(f"{path}.softmax", "softmax", (sc,), {"dim": -1}, f"{path}.softmax", o))
        pv = self.add(Step(f"{path}.attn_v", "matmul", (p, vh), {}, f"{path}.attn_v", o))
        merged = sh("merge_heads", pv, _merge_heads)
        out = self.add(Step(f"{path}.out_proj", "linear", (merged,),
                            {"weight": m.out_proj.weight.detach(),
                             "bias": None if m.out_proj.bias is None else m.out_proj.bias.detach()},
                            f"{path}.out_proj", o))
        if not m.batch_first:
            out = sh("out_t", out, torch.transpose, 0, 1)
        weights = None
        if b.get("need_weights", True):
            if b.get("average_attn_weights", True):
                weights = self.add(Step(f"{path}.attn_weights", "mean", (p,), {"dim": (1,), "keepdim": False},
                                        f"{path}.attn_weights", o))
            else:
                weights = p
        return (out, weights)


def _split_heads(t: torch.Tensor, heads: tuple[int, int]) -> torch.Tensor:
    return t.unflatten(-1, heads).transpose(1, 2)  # (B, L, E) -> (B, h, L, d)


def _split_heads_t(t: torch.Tensor, heads: tuple[int, int]) -> torch.Tensor:
    return t.unflatten(-1, heads).permute(0, 2, 3, 1)  # (B, S, E) -> (B, h, d, S)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).flatten(2)  # (B, h, L, d) -> (B, L, E)


def trace_model(model: nn.Module) -> TracedModel:
    """Trace ``model`` with ``torch.fx`` into supported :class:`Step` objects.

    Parameters
    ----------
    model : torch.nn.Module
        A model with one tensor input and one tensor output whose ``forward`` torch.fx can
        trace (no data-dependent Python control flow).  Batch norm is read in inference form
        (running statistics); dropout is the identity.

    Returns
    -------
    TracedModel

    Raises
    ------
    ValueError
        For a layer or operation outside the supported set (the message names the layer's path
        and type and lists what is supported), or a model torch.fx cannot trace.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=-1))
    >>> [s.kind for s in trace_model(m)]
    ['input', 'linear', 'softmax', 'output']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError ... for untraceable code
        raise ValueError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. The analysis needs a forward "
            "without data-dependent Python control flow"
        ) from exc
    gm = fx.GraphModule(tracer.root, graph)
    for n in gm.graph.nodes:  # GraphModule copies nodes; keep our scope metadata
        n.meta.setdefault("fpa_scope", "")
    b = _Builder(gm)
    scopes = {n.name: n.meta.get("fpa_scope", "") for n in graph.nodes}
    for n in gm.graph.nodes:
        n.meta["fpa_scope"] = scopes.get(n.name, "")
        b.node(n)
    if b.input is None or b.output is None:
        raise ValueError("the model has no tensor input or no output")
    return TracedModel(_prune(b.steps, b.output, b.input), b.output, b.input)


def _prune(steps: list[Step], output: str, inp: str) -> list[Step]:
    """Drop steps whose results the output does not depend on (e.g. unused attention weights)."""
    by_name = {s.name: s for s in steps}
    live = {output, inp}
    stack = [output]
    while stack:
        for name in by_name[stack.pop()].inputs:
            if name not in live:
                live.add(name)
                stack.append(name)
    return [s for s in steps if s.name in live]
