#!/usr/bin/python3
"""FedAvg of a PyTorch CNN over weightd: W worker processes each train the
same CNN on their shard of Fashion-MNIST and average all its parameters
through weightd every --local_steps steps (weightd.torch.SharedParameters).

    fedavg_cnn.py                    starts weightd and 4 workers on this
                                     machine; worker 0 prints one line per
                                     round, then "final test accuracy: 0.XXXX"
    fedavg_cnn.py --address=H:P      the same against a running weightd
    fedavg_cnn.py --baseline         the same CNN in one process on all the
                                     data, with the same budget: as many
                                     samples (workers x local_steps x batch
                                     per round), the same learning rates
    fedavg_cnn.py --address=H:P --rank=R --workers=W
                                     one worker (the launcher runs these)
    fedavg_cnn.py --workers=8 --dirichlet_alpha=0.1 \
        --policy="optimizer=adam lr=0.03"
                                     label-skewed shards (each worker sees
                                     mostly one or two classes), the server
                                     stepping with FedAdam instead of taking
                                     the average (bench/experiments_python.py)

Run it with Debian's /usr/bin/python3 (numpy, torch) and the weightd package
importable (the launcher adds <--build>/python to the workers' PYTHONPATH).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

import fashion_mnist
import local_job
from evaluation import accuracy, digest


def make_cnn():
    import torch.nn as nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 12 x 12
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 4 x 4
        nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10))


def learning_rate(lr, round_, rounds):
    """Cosine decay from ``lr`` in round 1 towards 0 after the last round
    (every worker computes the same rate)."""
    return lr * 0.5 * (1 + math.cos(math.pi * (round_ - 1) / rounds))


def train(args, client=None):
    """One worker (``client`` given) or the baseline (``client`` None).
    Returns the final test accuracy (None if this worker does not
    evaluate) and the digest of the shared parameters."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # The same initial model everywhere.
    images, labels = fashion_mnist.load("train", args.data_dir)
    if client is not None and args.dirichlet_alpha is not None:
        # At least a batch per shard: batches() needs one.
        images, labels = fashion_mnist.dirichlet_shard(
            images, labels, args.rank, args.workers, args.dirichlet_alpha,
            args.seed, min_examples=args.batch)
        counts = " ".join(f"{c}:{n}" for c, n in
                          enumerate(np.bincount(labels, minlength=10)))
        print(f"worker {args.rank}: {len(labels)} training images; per "
              f"class {counts}", file=sys.stderr, flush=True)
    elif client is not None:
        images, labels = fashion_mnist.shard(images, labels, args.rank,
                                             args.workers, args.seed)
    images = torch.from_numpy(fashion_mnist.standardize(images)).unsqueeze(1)
    labels = torch.from_numpy(labels)
    evaluates = client is None or args.rank == 0
    if evaluates:
        test_images, test_labels = fashion_mnist.load("test", args.data_dir)
        test_images = torch.from_numpy(fashion_mnist.standardize(test_images)).unsqueeze(1)
        test_labels = torch.from_numpy(test_labels)

    model = make_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    steps = args.local_steps
    shared = None
    if client is not None:
        import weightd.torch
        # Joins every parameter as fedavg/<name>; the first worker to join
        # sets the initial values and the policy (--policy; every worker
        # declares the same), the others receive them.
        shared = weightd.torch.SharedParameters(
            client, model, names="fedavg/", every=steps, policy=args.policy)
        # The first round then averages all W workers.
        client.barrier("fedavg/start", args.workers, timeout=args.timeout)
    else:
        steps *= args.workers  # The baseline: the samples of all workers.
    order = fashion_mnist.batches(len(images), args.batch,
                                  seed=args.seed * 1000 + args.rank)
    start = time.monotonic()
    for round_ in range(1, args.rounds + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, round_, args.rounds)
        loss_sum = 0.0
        for _ in range(steps):
            index = torch.from_numpy(next(order))
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            if shared is not None:
                shared.step(weight=len(index))  # Averages every `steps`.
        if evaluates:
            # Every round on the first 2000 test images (cheap); the final
            # figure on all 10000.
            acc = accuracy(model, test_images[:2000], test_labels[:2000])
            print(f"round {round_:3d}  train_loss {loss_sum / steps:.4f}  "
                  f"test_acc(2000) {acc:.4f}  secs {time.monotonic() - start:.1f}",
                  flush=True)
    final = accuracy(model, test_images, test_labels) if evaluates else None
    if final is not None:
        print(f"final test accuracy: {final:.4f}", flush=True)
    return final, digest(dict(model.named_parameters()))


def run_worker(args):
    import weightd
    with weightd.Client(args.address, worker_id=f"fedavg-{args.rank}") as client:
        return train(args, client)


def launch(args):
    """Starts weightd (unless --address) and the workers; returns once all
    finished. Worker 0's output is ours."""
    began = time.monotonic()
    with local_job.Job(args.address, args.build, args.logs) as job:
        shards = ("iid shards" if args.dirichlet_alpha is None else
                  f"Dirichlet({args.dirichlet_alpha}) shards")
        print(f"fedavg_cnn: weightd at {job.address}, {args.workers} workers, "
              f"{args.rounds} rounds of {args.local_steps} steps, {shards}, "
              f"policy {args.policy!r}; logs in {job.logs}",
              file=sys.stderr, flush=True)
        forwarded = [f"--{k}={v}" for k, v in vars(args).items()
                     if k in ("rounds", "local_steps", "batch", "lr", "seed",
                              "threads", "data_dir", "timeout", "policy",
                              "dirichlet_alpha") and v is not None]
        workers = [
            job.start(f"worker {rank}", [
                sys.executable, os.path.abspath(__file__),
                f"--address={job.address}", f"--rank={rank}",
                f"--workers={args.workers}",
                f"--result={job.logs / f'worker-{rank}.json'}", *forwarded])
            for rank in range(args.workers)]
        job.wait(workers, timeout=args.timeout)
    print(f"fedavg_cnn: {args.workers} workers done in "
          f"{time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="a running weightd (default: the "
                        "launcher starts one)")
    parser.add_argument("--rank", type=int, help="run worker RANK only "
                        "(needs --address)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--baseline", action="store_true",
                        help="train in this process on all the data, no weightd")
    parser.add_argument("--rounds", type=int, default=36)
    parser.add_argument("--local_steps", type=int, default=60,
                        help="SGD steps of each worker between two averages")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1,
                        help="the initial model, the batches and the shards")
    parser.add_argument("--dirichlet_alpha", type=float, metavar="A",
                        help="label-skewed shards: each class's images split "
                        "over the workers by proportions drawn from "
                        "Dirichlet(A) (fashion_mnist.dirichlet_partition; "
                        "0.1: mostly one or two classes per worker; default: "
                        "equal random IID shards)")
    parser.add_argument("--policy", metavar="TEXT",
                        help="the policy every shared parameter is declared "
                        "with (docs/algorithms.md), e.g. 'optimizer=adam "
                        "lr=0.03' (default: none, the server's)")
    parser.add_argument("--threads", type=int,
                        help="torch threads per process (default: 1 per "
                        "worker; every core for --baseline)")
    parser.add_argument("--data_dir", default=fashion_mnist.DATA_DIR)
    parser.add_argument("--build", default=local_job.DEFAULT_BUILD,
                        help="build tree with server/weightd and python/")
    parser.add_argument("--logs", help="directory for the daemon's log and "
                        "the workers' results (default: a new temporary one)")
    parser.add_argument("--result", help="a worker writes its accuracy and "
                        "the digest of its parameters here (JSON)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds the whole job may take")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.dirichlet_alpha is not None and not (
            math.isfinite(args.dirichlet_alpha) and args.dirichlet_alpha > 0):
        parser.error("--dirichlet_alpha must be positive and finite")
    if args.threads is None:
        args.threads = os.cpu_count() if args.baseline else 1

    def run():
        if args.baseline:
            args.rank = 0
            began = time.monotonic()
            train(args)
            print(f"fedavg_cnn: baseline done in {time.monotonic() - began:.1f} s",
                  file=sys.stderr, flush=True)
        elif args.rank is None:
            launch(args)
        else:
            if args.address is None:
                parser.error("--rank needs --address")
            final, shared = run_worker(args)
            if args.result:
                with open(args.result, "w") as f:
                    json.dump({"rank": args.rank, "accuracy": final,
                               "parameters_sha256": shared}, f)

    local_job.run_main("fedavg_cnn", run)


if __name__ == "__main__":
    main()
