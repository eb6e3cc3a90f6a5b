"""fashion_mnist.dirichlet_partition, the label-skewed shards of
fedavg_cnn.py --dirichlet_alpha: on synthetic labels, no data files needed.

Run: /usr/bin/python3 -m pytest examples/python/tests/test_fashion_mnist.py
(ctest runs it within python_examples_test.)
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import fashion_mnist  # noqa: E402

CLASSES = 10
PER_CLASS = 600


@pytest.fixture
def labels():
    """6000 labels, 600 of each class, in a random order."""
    return np.random.default_rng(7).permutation(
        np.repeat(np.arange(CLASSES), PER_CLASS))


def top2_share(labels, parts):
    """Mean over the parts of the fraction of a part's examples that belong
    to its two most frequent classes (IID: about 0.2)."""
    shares = []
    for part in parts:
        counts = np.sort(np.bincount(labels[part], minlength=CLASSES))
        shares.append(counts[-2:].sum() / len(part))
    return float(np.mean(shares))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_parts_are_disjoint_and_complete(labels, alpha):
    parts = fashion_mnist.dirichlet_partition(labels, 8, alpha, seed=1)
    assert len(parts) == 8
    everything = np.concatenate(parts)
    assert len(everything) == len(labels)  # Disjoint (given complete)...
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    for part in parts:
        assert np.array_equal(part, np.sort(part))
        assert len(part) >= 64  # ...and every part fills a batch.


def test_the_same_arguments_give_the_same_split(labels):
    first = fashion_mnist.dirichlet_partition(labels, 8, 0.1, seed=3)
    again = fashion_mnist.dirichlet_partition(labels.copy(), 8, 0.1, seed=3)
    other = fashion_mnist.dirichlet_partition(labels, 8, 0.1, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_small_alpha_skews_the_labels_and_large_alpha_does_not(labels):
    for seed in (1, 2, 3):
        skewed = fashion_mnist.dirichlet_partition(labels, 8, 0.1, seed=seed)
        near_iid = fashion_mnist.dirichlet_partition(labels, 8, 100.0,
                                                     seed=seed)
        # 0.1: two classes make most of each part; 100: about 2 in 10.
        assert top2_share(labels, skewed) > 0.75, seed
        assert top2_share(labels, near_iid) < 0.35, seed


def test_a_shard_is_its_part_of_the_partition(labels):
    images = np.arange(len(labels), dtype=np.float32)[:, None] * np.ones(
        (1, 4), np.float32)
    parts = fashion_mnist.dirichlet_partition(labels, 4, 0.5, seed=2)
    for rank in range(4):
        x, y = fashion_mnist.dirichlet_shard(images, labels, rank, 4, 0.5,
                                             seed=2)
        assert np.array_equal(y, labels[parts[rank]])
        assert np.array_equal(x[:, 0], parts[rank].astype(np.float32))


def test_impossible_arguments_are_refused(labels):
    with pytest.raises(ValueError, match="positive"):
        fashion_mnist.dirichlet_partition(labels, 8, 0.0)
    with pytest.raises(ValueError, match="at least 1 part"):
        fashion_mnist.dirichlet_partition(labels, 0, 0.1)
    with pytest.raises(ValueError, match="cannot give"):
        fashion_mnist.dirichlet_partition(labels, 8, 0.1, min_examples=1000)
    # Each of 10 classes all in one part, at most 10 parts non-empty: 1000
    # draws over 60 parts all leave one short.
    with pytest.raises(ValueError, match="1000 Dirichlet"):
        fashion_mnist.dirichlet_partition(labels, 60, 0.001, min_examples=50)
    with pytest.raises(ValueError, match="rank"):
        fashion_mnist.dirichlet_shard(labels, labels, 4, 4, 0.1)
