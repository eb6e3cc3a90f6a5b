"""Fashion-MNIST as numpy arrays, from Debian's dataset-fashion-mnist.

    images, labels = fashion_mnist.load("train")   # (60000, 28, 28), (60000,)
    images, labels = fashion_mnist.shard(images, labels, rank=1, count=4)
    images, labels = fashion_mnist.dirichlet_shard(      # label-skewed
        images, labels, rank=1, count=8, alpha=0.1, seed=1)

Images are float32 in [0, 1], labels int64 in 0..9. Shared by the Python
examples; the files are the IDX ones the C++ demo reads
(examples/fashion_mnist.cc).
"""

import gzip
import os

import numpy as np

DATA_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
           "Shirt", "Sneaker", "Bag", "Ankle boot")
# Pixel mean and standard deviation of the training images (in [0, 1]).
MEAN, STD = 0.2860, 0.3530


def _read_idx(path: str, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: install Debian's dataset-fashion-mnist "
            "(scripts/install_deps.sh demo) or pass another data directory"
        ) from None
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: not an IDX file of the expected kind "
                         f"(magic {found:#x}, expected {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
            for i in range(magic & 0xFF)]
    offset = 4 + 4 * len(dims)
    values = np.frombuffer(data, np.uint8, offset=offset)
    if values.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {values.size} bytes of data for shape "
                         f"{dims}")
    return values.reshape(dims)


def load(split: str = "train", data_dir: str = DATA_DIR):
    """(images, labels) of ``split`` ("train": 60000, "test": 10000)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"),
                       0x803)
    labels = _read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"),
                       0x801)
    if len(images) != len(labels):
        raise ValueError(f"{data_dir}: {len(images)} {split} images but "
                         f"{len(labels)} labels")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def shard(images, labels, rank: int, count: int, seed: int = 0):
    """Part ``rank`` of ``count`` disjoint, equally sized random parts (the
    same split in every process that passes the same ``seed``)."""
    if not 0 <= rank < count:
        raise ValueError(f"rank {rank} is not in 0..{count - 1}")
    order = np.random.default_rng(seed).permutation(len(images))
    part = np.array_split(order, count)[rank]
    return images[part], labels[part]


def dirichlet_partition(labels, count: int, alpha: float, seed: int = 0,
                        min_examples: int = 64):
    """Label-skewed parts: ``count`` arrays of indices into ``labels``, each
    sorted, together holding every index exactly once.

    For each class, its indices (in a seeded random order) are cut into
    ``count`` consecutive runs whose lengths follow proportions drawn from
    Dirichlet(alpha, ..., alpha), afresh per class; run j goes to part j.
    Small ``alpha``: each part holds few classes (0.1: mostly one or two);
    large: close to IID. The per-class scheme of the C++ worker's
    ``--partition=dirichlet`` (examples/partition.h; the same scheme, not
    the same draws). A split that leaves a part with fewer than
    ``min_examples`` indices is drawn again (up to 1000 times; then
    ValueError), so that every part fills its mini-batches.

    Every draw comes from numpy's ``default_rng(seed)``: every process that
    passes the same arguments computes the same split."""
    labels = np.asarray(labels)
    if count < 1:
        raise ValueError(f"count {count}: a partition needs at least 1 part")
    if not (alpha > 0 and np.isfinite(alpha)):
        raise ValueError(f"alpha {alpha}: must be positive and finite")
    if min_examples * count > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {count} parts "
                         f"of {min_examples} or more")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(1000):
        parts = [[] for _ in range(count)]
        for members in by_class:
            members = rng.permutation(members)
            proportions = rng.dirichlet(np.full(count, alpha))
            cuts = np.round(np.cumsum(proportions)[:-1] *
                            len(members)).astype(int)
            for j, run in enumerate(np.split(members, cuts)):
                parts[j].append(run)
        parts = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in parts) >= min_examples:
            return parts
    raise ValueError(f"1000 Dirichlet({alpha}) partitions over {count} parts "
                     f"all left a part with fewer than {min_examples} "
                     "examples: use a larger alpha or fewer parts")


def dirichlet_shard(images, labels, rank: int, count: int, alpha: float,
                    seed: int = 0, min_examples: int = 64):
    """Part ``rank`` of ``dirichlet_partition(labels, count, alpha, seed,
    min_examples)``: label-skewed, of unequal sizes."""
    if not 0 <= rank < count:
        raise ValueError(f"rank {rank} is not in 0..{count - 1}")
    part = dirichlet_partition(labels, count, alpha, seed, min_examples)[rank]
    return images[part], labels[part]


def standardize(images):
    """Pixels to zero mean and unit variance over the training set, which
    lets SGD take larger steps."""
    return (images - MEAN) / STD


def batches(count: int, batch: int, seed: int):
    """Endless index batches over ``count`` samples: a new random order
    every epoch, a partial last batch dropped."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(count)
        for i in range(0, count - batch + 1, batch):
            yield order[i:i + batch]
