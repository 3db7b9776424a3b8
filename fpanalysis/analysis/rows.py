"""Where the exact Jacobian rows of a convolutional prefix can be nonzero: seed colouring for tier B.

Tier-B radii (:func:`fpanalysis.analysis.adjoint._exact_rows`) need, for every neuron ``t`` of a
step, the sum ``sum_s |row_t(J_{t<-s})| w_s`` over all earlier steps ``s``: one backward pass per
neuron.  In a convolutional network the row of a neuron at spatial position ``(h, w)`` is zero
outside a box around ``(sigma h, sigma w)`` at every earlier step (its receptive field), so
neurons whose boxes never overlap can share one backward pass: the sum of their rows is the
rows side by side, and each entry of the result belongs to exactly one of them.  This is the
column-grouping compression of sparse Jacobians (Curtis, Powell & Reid, "On the estimation of
sparse Jacobian matrices", IMA J. Appl. Math. 13, 1974), applied to rows, with the groups given
by the geometry of the network instead of a graph colouring.  It changes only which neurons share
a pass, not a single product or sum that reaches the certificate other than its order (the
float64 allowance of the certificate covers any order; docs/theory.md section 2.3a).

The boxes are derived from the step kinds alone (never from values, which may cancel to zero by
chance): a convolution or pooling with kernel ``k``, stride ``st``, padding ``p`` and dilation
``d`` maps output index ``o`` to input indices ``o st - p + d [0, k - 1]``; batch norm, ReLU,
identity, affine and additions of equal shapes keep the box.  Any other step in the prefix
(linear layers, reshapes, means, smooth layers) ends the colouring: every neuron then gets its
own pass, as before.

A seed at ``h`` has the box ``[sigma h + lo, sigma h + hi]`` at a step; seeds ``P`` apart in the
same channel have disjoint boxes when ``sigma P > hi - lo``.  :func:`periods` returns the
smallest such ``P`` per axis over the whole prefix, :func:`owners` which seed of a colour each
entry of a step belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nn.trace import Step, TracedModel

__all__ = ["Box", "boxes", "counts", "dominators", "owners", "periods"]

# steps that keep a neuron's box (elementwise, or additions of tensors of one shape)
_SAME_BOX = frozenset({"batchnorm", "relu", "identity", "affine", "add", "sub", "output"})
_WINDOWED = frozenset({"conv2d", "maxpool2d", "avgpool2d"})
_SOURCES = frozenset({"input", "param"})


@dataclass(frozen=True)
class Box:
    """Per spatial axis ``(sigma, lo, hi)``: the row of the seed at index ``i`` of the target is
    zero outside ``[sigma i + lo, sigma i + hi]`` at this step."""

    h: tuple[int, int, int]
    w: tuple[int, int, int]


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)  # type: ignore[call-overload]


def _through(s: Step, box: Box) -> Box | None:
    """The box at the input of step ``s`` (4-D tensors) given the box at its output."""
    if s.kind in _SAME_BOX:
        return box
    if s.kind not in _WINDOWED:
        return None
    a = s.attrs
    if isinstance(a.get("padding"), str):  # "same" / "valid": not followed (no colouring)
        return None
    if s.kind == "conv2d":
        k = tuple(int(v) for v in a["weight"].shape[-2:])
        dil = _pair(a["dilation"])
    else:
        k = _pair(a["kernel_size"])
        dil = _pair(a.get("dilation", 1))
    st, pad = _pair(a["stride"]), _pair(a["padding"])
    out = []
    for ax, (sig, lo, hi) in enumerate((box.h, box.w)):
        out.append((sig * st[ax], lo * st[ax] - pad[ax], hi * st[ax] - pad[ax] + dil[ax] * (k[ax] - 1)))
    return Box(out[0], out[1])


def boxes(traced: TracedModel, upto: str, shapes: dict[str, tuple[int, ...]],
          stop: str | None = None) -> dict[str, Box] | None:
    """The box of every step of the prefix that reaches ``upto`` (whose rows can be nonzero), or
    ``None`` when the prefix holds a step the geometry does not cover or a tensor that is not
    (batch, channels, height, width).  ``shapes``: each step's output shape (with the batch).
    ``stop``: a step the rows are not followed beyond (a cut of the windowed radii; it gets its
    box, the steps before it none)."""
    prefix: list[Step] = []
    for s in traced.steps:
        prefix.append(s)
        if s.name == upto:
            break
    else:
        raise ValueError(f"no step named {upto!r}")
    out: dict[str, Box] = {upto: Box((1, 0, 0), (1, 0, 0))}
    for s in reversed(prefix):
        if s.kind == "size" or s.name not in out:
            continue
        if len(shapes.get(s.name, ())) != 4:
            return None
        if s.kind in _SOURCES or s.name == stop:
            continue
        box = _through(s, out[s.name])
        if box is None:
            return None
        for n in s.inputs:
            if n not in shapes:  # a size argument, not a tensor
                continue
            if len(shapes[n]) != 4:
                return None
            if s.kind in _SAME_BOX and tuple(shapes[n]) != tuple(shapes[s.name]):
                return None  # broadcasting: entries shared between positions
            old = out.get(n)
            if old is None:
                out[n] = box
                continue
            if old.h[0] != box.h[0] or old.w[0] != box.w[0]:
                return None  # two paths with different strides
            out[n] = Box((box.h[0], min(old.h[1], box.h[1]), max(old.h[2], box.h[2])),
                         (box.w[0], min(old.w[1], box.w[1]), max(old.w[2], box.w[2])))
    return out


def periods(bx: dict[str, Box], size: tuple[int, int]) -> tuple[int, int]:
    """The smallest spacing ``(P_h, P_w)`` of seeds in one channel whose boxes are disjoint at every
    step (``sigma P > hi - lo``), capped at the target's ``size`` (one seed per colour then)."""
    ph = max((b.h[2] - b.h[1]) // b.h[0] + 1 for b in bx.values())
    pw = max((b.w[2] - b.w[1]) // b.w[0] + 1 for b in bx.values())
    return min(ph, size[0]), min(pw, size[1])


def counts(per: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Seeds of a colour along each axis, at most: ``ceil(size / P)``."""
    return -(-size[0] // per[0]), -(-size[1] // per[1])


def owners(box: Box, shape: tuple[int, int], offsets: torch.Tensor, per: tuple[int, int],
           size: tuple[int, int]) -> torch.Tensor:
    """For colours with seed offsets ``offsets`` (S, 2) -- seeds at ``(a + P_h i, b + P_w j)`` inside
    the target's spatial ``size`` -- the index ``i * n_w + j`` (``(n_h, n_w)`` = :func:`counts`) of
    the seed whose box holds each entry of a step of spatial ``shape``, as a (S, H_s, W_s) int64
    tensor; ``n_h * n_w`` (an extra slot) where no seed's box holds the entry (the rows of the
    colour are zero there)."""
    n = counts(per, size)
    idx = []
    for ax, (sig, lo, hi) in enumerate((box.h, box.w)):
        y = torch.arange(shape[ax], dtype=torch.int64)[None, :]
        a = offsets[:, ax:ax + 1].to(torch.int64)
        rel = y - lo - sig * a                                  # (S, n): offset from seed 0's box
        i = torch.div(rel, sig * per[ax], rounding_mode="floor")
        inside = (rel - i * sig * per[ax] <= hi - lo) & (i >= 0) & (a + per[ax] * i < size[ax])
        idx.append((i, inside))
    (ih, okh), (iw, okw) = idx
    flat = ih[:, :, None] * n[1] + iw[:, None, :]
    ok = okh[:, :, None] & okw[:, None, :]
    return torch.where(ok, flat, torch.full_like(flat, n[0] * n[1]))


def dominators(traced: TracedModel) -> dict[str, set[str]]:
    """For every step, the steps every path from a source (the input, constant tensors) to it
    passes through, itself included (``dom(s) = {s} | intersection of dom(p) over its inputs``).
    A constant tensor is a source of its own, so a step fed by one and by the input is dominated
    by neither path's steps."""
    dom: dict[str, set[str]] = {}
    for s in traced.steps:
        ins = [dom[n] for n in s.inputs if n in dom]
        common = set.intersection(*ins) if ins else set()
        dom[s.name] = common | {s.name}
    return dom
