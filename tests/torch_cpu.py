"""Which paths torch's CPU float16 kernels take on this machine, for the tests that compare the
emulator with them.

torch's CPU half kernels differ between CPUs, ATen capabilities (``ATEN_CPU_CAPABILITY`` =
``default``, ``avx2``, ``avx512``) and builds (MKL, oneDNN and ATen's own loops choose their
kernels at run time).  So the tests assert, on every x86-64 CPU, what does not depend on the
path: torch's result lies within the profile's deterministic error bound of the exact result
(:mod:`fpanalysis.bounds`).  They assert bit-for-bit agreement with the emulator only where a
probe shows that torch takes the modelled path; elsewhere they measure the match rate and
report it (a printed line, shown by ``pytest -rP``, and a ``record_property`` entry in
``--junitxml`` reports), never silently pass.

The probes use crafted inputs whose result tells the summation order apart: the dot product of
``x = [1024] + [3 * 2**-16] * 99999`` (fp16 and bf16 numbers) with ones is 1024 for a sequential
binary32 loop (each small term is below half an ulp of 1024 in binary32, ``2**-14``, so the sum
stagnates) and more for any accumulation that sums the small terms apart (lanes, blocks,
pairwise): ``1024 + 99999 * 3 * 2**-16 = 1028.58`` rounds to 1029 in fp16 and 1032 in bf16.
(With 29999 terms, 1025.37, the fp16 probe alone works: 1025 on an AMD EPYC with AVX-512.)
A second probe makes sure the accumulator is binary32 and not the 16-bit format itself, which
stagnates too: ``[1] + [2**-12] * 256`` with ones is exactly 1.0625 in binary32 (in any order)
and 1 in a fp16 or bf16 accumulator (``2**-12`` is below half their ulp of 1).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

_K = 100000
_SMALL = 3 * 2.0**-16


def capability() -> str:
    """torch's ATen CPU capability in use (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


@functools.lru_cache(maxsize=None)
def half_mm_is_sequential_fp32(dtype: str = "float16") -> bool:
    """Whether torch's ``dtype`` (float16 or bfloat16) ``mm`` and ``linear`` sum every dot product
    in k order in binary32 (the ``fp32-accumulate`` sequential model), probed as (8, K) x (K, 8)
    products."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.full((8, _K), _SMALL, dtype=dt)
    a[:, 0] = 1024
    b = torch.ones((_K, 8), dtype=dt)
    outs = [a.mm(b), torch.nn.functional.linear(a, b.t().contiguous())]
    c = torch.full((8, 257), 2.0**-12, dtype=dt)
    c[:, 0] = 1
    d = torch.ones((257, 8), dtype=dt)
    fp32 = [c.mm(d), torch.nn.functional.linear(c, d.t().contiguous())]
    return all(bool((o == 1024).all()) for o in outs) and all(bool((o == 1.0625).all()) for o in fp32)


@functools.lru_cache(maxsize=None)
def half_conv2d_is_sequential_fp32(dtype: str = "float16") -> bool:
    """The same probe for ``conv2d`` (3x3 kernels over 11112 channels: K = 100008)."""
    import torch

    dt = getattr(torch, dtype)
    c = -(-_K // 9)
    x = torch.full((1, c, 3, 3), _SMALL, dtype=dt)
    x[0, 0, 0, 0] = 1024
    w = torch.ones((2, c, 3, 3), dtype=dt)
    c = torch.full((1, 257, 1, 1), 2.0**-12, dtype=dt)
    c[0, 0, 0, 0] = 1
    fp32 = torch.nn.functional.conv2d(c, torch.ones((2, 257, 1, 1), dtype=dt))
    return bool((torch.nn.functional.conv2d(x, w) == 1024).all()) and bool((fp32 == 1.0625).all())


def all_finite_fp16() -> np.ndarray:
    bits = np.arange(0, 0x7C00, dtype=np.uint16)
    return np.concatenate([bits, bits | 0x8000]).view(np.float16)


_ELEMENTWISE_PROBES: dict[str, bool] = {}


def half_elementwise_is_fp32_opmath(key: str, fn16: Callable[[Any], Any], fn32: Callable[[Any], Any],
                                    shape: tuple[int, ...]) -> bool:
    """Whether torch's float16 kernel (``fn16``, on half tensors) equals its float32 kernel
    (``fn32``: the same fp16 parameters, fp32 arithmetic) rounded once to fp16 (the emulator's
    model), on every finite fp16 value of magnitude at most 8 laid out as tensors of ``shape``
    (trailing values dropped).  Cached by ``key``."""
    if key not in _ELEMENTWISE_PROBES:
        import torch

        v = all_finite_fp16()
        v = v[np.abs(v.astype(np.float32)) <= 8]
        per = int(np.prod(shape))
        x = torch.from_numpy(v[: v.size // per * per].copy()).reshape((-1,) + tuple(shape[1:]))
        with torch.no_grad():
            h = fn16(x).float()
            r = fn32(x.float()).half().float()
        _ELEMENTWISE_PROBES[key] = bool(((h == r) | (h.isnan() & r.isnan())).all())
    return _ELEMENTWISE_PROBES[key]


def report_match(record_property: Callable[[str, Any], None], what: str, rate: float, modelled: bool) -> None:
    """Record the bitwise match rate of the emulator with torch's kernel (``record_property``
    and a printed line naming the ATen capability and whether the path is the modelled one)."""
    record_property(f"torch_match_rate[{what}]", f"{rate:.6f}")
    record_property(f"torch_path_modelled[{what}]", str(modelled))
    print(
        f"torch CPU ({capability()}) {what}: bitwise match rate {rate:.6f} "
        f"({'modelled path' if modelled else 'not the modelled path: bound checked, rate reported'})"
    )


def assert_within(got: np.ndarray, exact: np.ndarray, bound: np.ndarray, what: str) -> None:
    """``|got - exact| <= bound`` wherever the bound is finite (an infinite bound says that
    overflow is not excluded); a slack of ``2**-50 |exact|`` covers the float64 rounding of
    ``exact`` when it is a correctly rounded (not exact) reference."""
    got = np.asarray(got, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), got.shape)
    fin = np.isfinite(bound)
    assert np.all(np.isfinite(got[fin])), f"{what}: non-finite result where the bound excludes overflow"
    err = np.abs(got[fin] - exact[fin])
    ok = err <= bound[fin] + 2.0**-50 * np.abs(exact[fin])
    if not ok.all():
        i = int(np.argmax(~ok))
        raise AssertionError(
            f"{what}: torch result outside the deterministic bound at {int((~ok).sum())} entries; "
            f"first: got {got[fin][i]!r}, exact {exact[fin][i]!r}, bound {bound[fin][i]!r}"
        )
