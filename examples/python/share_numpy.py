#!/usr/bin/python3
"""Two numpy models in two processes share their weights through weightd:
train, share, update, repeat. Each is a softmax regression trained on its
half of Fashion-MNIST; after every round of local steps both hold the
average. With a daemon running (build/release/server/weightd):

    share_numpy.py --address=127.0.0.1:7070 --rank=0 &
    share_numpy.py --address=127.0.0.1:7070 --rank=1
"""
import argparse
import hashlib

import numpy as np

import fashion_mnist
import weightd

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--address", required=True)
parser.add_argument("--rank", type=int, required=True)
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--rounds", type=int, default=10)
parser.add_argument("--steps", type=int, default=50, help="local steps a round")
args = parser.parse_args()

x, y = fashion_mnist.shard(*fashion_mnist.load("train"), args.rank, args.workers)
test_x, test_y = fashion_mnist.load("test")
x, test_x = x.reshape(len(x), -1), test_x.reshape(len(test_x), -1)
w, b = np.zeros((784, 10), np.float32), np.zeros(10, np.float32)
rng = np.random.default_rng(args.rank)
with weightd.Client(args.address, worker_id=f"numpy-{args.rank}") as ps:
    ps.join({"softmax/w": w, "softmax/b": b})  # The first one sets them.
    ps.barrier("softmax/start", args.workers, timeout=60)
    for round_ in range(1, args.rounds + 1):
        for _ in range(args.steps):  # Train: SGD on the cross-entropy.
            i = rng.integers(0, len(x), 100)
            z = x[i] @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(100), y[i]] -= 1  # d loss / d logits
            w -= 0.5 * x[i].T @ p / 100
            b -= 0.5 * p.mean(0)
        # Share and update: w and b become the average of both models.
        ps.push_pull({"softmax/w": w, "softmax/b": b}, weight=args.steps * 100)
        accuracy = np.mean((test_x @ w + b).argmax(1) == test_y)
        print(f"rank {args.rank} round {round_}: test accuracy {accuracy:.4f}",
              flush=True)
print(f"rank {args.rank} weights sha256 "
      f"{hashlib.sha256(w.tobytes() + b.tobytes()).hexdigest()}")
