#!/usr/bin/python3
"""Two different architectures share part of their weights through weightd.

A CNN and a GRU, in separate processes, both classify Fashion-MNIST images
read as 28 rows of 28 pixels, on disjoint data: the CNN has 30000 labelled
images (half the training set), the GRU only --rnn_labels of the other half.
Both embed every row with a Linear(28, 64) and end with a Linear(64, 10)
head; those two layers are shared (each model maps its own parameter names
onto the shared tensors rows/* and head/*), the rest stays private:

    CNN: rows -> ReLU -> Conv1d over the rows x2 -> max over rows -> head
    GRU: embed -> ReLU -> GRU(64) -> last state -> out

    cnn_rnn_share.py              starts weightd, trains both models sharing
                                  (one line per round each), then each alone
                                  with the same budget, and prints the four
                                  test accuracies
    cnn_rnn_share.py --address=H:P --model=cnn|gru [--alone]
                                  one model (the launcher runs these)
"""

import argparse
import json
import os
import sys
import time

import fashion_mnist
import local_job
from evaluation import accuracy, digest

# Each model's parameter name -> the shared tensor's name.
SHARED = {
    "cnn": {"rows.weight": "rows/w", "rows.bias": "rows/b",
            "classifier.weight": "head/w", "classifier.bias": "head/b"},
    "gru": {"embed.weight": "rows/w", "embed.bias": "rows/b",
            "out.weight": "head/w", "out.bias": "head/b"},
}


def make_model(kind):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class RowCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.rows = nn.Linear(28, 64)
            self.conv1 = nn.Conv1d(64, 64, 3, padding=1)
            self.conv2 = nn.Conv1d(64, 64, 3, padding=1)
            self.classifier = nn.Linear(64, 10)

        def forward(self, x):  # x: (batch, 28 rows, 28 pixels)
            h = F.relu(self.rows(x)).transpose(1, 2)  # (batch, 64, 28)
            h = F.max_pool1d(F.relu(self.conv1(h)), 2)
            h = F.relu(self.conv2(h)).amax(2)
            return self.classifier(h)

    class RowGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(28, 64)
            self.gru = nn.GRU(64, 64, batch_first=True)
            self.out = nn.Linear(64, 10)

        def forward(self, x):
            h, _ = self.gru(F.relu(self.embed(x)))
            return self.out(h[:, -1])

    return {"cnn": RowCNN, "gru": RowGRU}[kind]()


def load_data(args):
    """The model's own training set (disjoint halves of the training images;
    the GRU's cut to --rnn_labels) and the whole test set."""
    images, labels = fashion_mnist.load("train", args.data_dir)
    images = fashion_mnist.standardize(images)
    half = 0 if args.model == "cnn" else 1
    images, labels = fashion_mnist.shard(images, labels, half, 2, seed=0)
    limit = args.cnn_labels if args.model == "cnn" else args.rnn_labels
    test_images, test_labels = fashion_mnist.load("test", args.data_dir)
    return (images[:limit], labels[:limit],
            fashion_mnist.standardize(test_images)[:args.test_limit],
            test_labels[:args.test_limit])


def train(args, client=None):
    """Trains args.model, sharing through ``client`` unless it is None.
    Returns its test accuracy and the digest of its shared layers' values."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels, test_images, test_labels = [
        torch.from_numpy(a) for a in load_data(args)]
    model = make_model(args.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    names = SHARED[args.model]
    shared = None
    if client is not None:
        import weightd.torch
        # The first of the two to join sets rows/* and head/*; the other
        # starts from them.
        shared = weightd.torch.SharedParameters(
            client, model, share=list(names), names=names, every=args.steps)
        client.barrier("cnn_rnn/start", 2, timeout=args.timeout)
    order = fashion_mnist.batches(len(images), args.batch,
                                  seed=args.seed + (args.model == "gru"))
    label = f"{args.model}{' alone' if client is None else ''}"
    start = time.monotonic()
    for round_ in range(1, args.rounds + 1):
        loss_sum = 0.0
        for _ in range(args.steps):
            index = torch.from_numpy(next(order))
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            if shared is not None:
                shared.step(weight=len(index))  # Averages every args.steps.
        # Every round on the first 2000 test images (cheap); the final
        # figure on all of them.
        acc = accuracy(model, test_images[:2000], test_labels[:2000])
        print(f"{label:9s} round {round_:3d}  train_loss "
              f"{loss_sum / args.steps:.4f}  test_acc(2000) {acc:.4f}  "
              f"secs {time.monotonic() - start:.1f}", flush=True)
    acc = accuracy(model, test_images, test_labels)
    print(f"{label:9s} final test accuracy: {acc:.4f}", flush=True)
    params = dict(model.named_parameters())
    # Keyed by shared name: equal in the CNN and the GRU iff their shared
    # layers hold bit-identical values.
    return acc, digest({names[p]: params[p] for p in names})


def launch(args):
    """Both models sharing, then both alone; prints the four accuracies."""
    forwarded = [f"--{k}={v}" for k, v in vars(args).items()
                 if k in ("rounds", "steps", "batch", "lr", "seed", "threads",
                          "cnn_labels", "rnn_labels", "test_limit",
                          "data_dir", "timeout")]
    script = os.path.abspath(__file__)
    with local_job.Job(args.address, args.build, args.logs) as job:
        print(f"cnn_rnn_share: weightd at {job.address}; the CNN and the GRU "
              f"train sharing rows/* and head/*; logs in {job.logs}",
              file=sys.stderr, flush=True)
        results = {}
        for phase in ("shared", "alone"):
            procs = []
            for model in ("cnn", "gru"):
                results[model, phase] = job.logs / f"{model}-{phase}.json"
                argv = [sys.executable, script, f"--model={model}",
                        f"--result={results[model, phase]}", *forwarded]
                if phase == "shared":  # Their round lines are ours.
                    argv.append(f"--address={job.address}")
                    procs.append(job.start(f"{model} (shared)", argv))
                else:
                    argv.append("--alone")
                    with open(job.logs / f"{model}-alone.log", "wb") as out:
                        procs.append(job.start(f"{model} (alone)", argv,
                                               stdout=out))
            if phase == "alone":
                print("cnn_rnn_share: now each model alone, same budget "
                      f"(output in {job.logs})", file=sys.stderr, flush=True)
            job.wait(procs, timeout=args.timeout)
        acc = {key: json.loads(path.read_text())["accuracy"]
               for key, path in results.items()}
    cnn, gru = f"CNN ({args.cnn_labels} labels)", f"GRU ({args.rnn_labels} labels)"
    print(f"{cnn:20s} sharing rows + head: test accuracy {acc['cnn', 'shared']:.4f}"
          f"   alone: {acc['cnn', 'alone']:.4f}")
    print(f"{gru:20s} sharing rows + head: test accuracy {acc['gru', 'shared']:.4f}"
          f"   alone: {acc['gru', 'alone']:.4f}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="a running weightd (default: the "
                        "launcher starts one)")
    parser.add_argument("--model", choices=("cnn", "gru"),
                        help="train this model only (the launcher runs these)")
    parser.add_argument("--alone", action="store_true",
                        help="with --model: share nothing, no weightd")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50,
                        help="local steps between two averages")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process")
    parser.add_argument("--cnn_labels", type=int, default=30000,
                        help="the CNN's training images (at most 30000)")
    parser.add_argument("--rnn_labels", type=int, default=1000,
                        help="the GRU's training images (at most 30000)")
    parser.add_argument("--test_limit", type=int, default=10000,
                        help="test images to evaluate on")
    parser.add_argument("--data_dir", default=fashion_mnist.DATA_DIR)
    parser.add_argument("--build", default=local_job.DEFAULT_BUILD,
                        help="build tree with server/weightd and python/")
    parser.add_argument("--logs", help="directory for the daemon's log and "
                        "the models' results (default: a new temporary one)")
    parser.add_argument("--result", help="with --model: write the accuracy "
                        "and the digest of the shared layers here (JSON)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds each phase may take")
    args = parser.parse_args()

    def run():
        if args.model is None:
            launch(args)
            return
        if args.alone:
            acc, digest = train(args)
        elif args.address is None:
            parser.error("--model needs --address (or --alone)")
        else:
            import weightd
            with weightd.Client(args.address,
                                worker_id=f"cnn_rnn-{args.model}") as client:
                acc, digest = train(args, client)
        if args.result:
            with open(args.result, "w") as f:
                json.dump({"model": args.model, "alone": args.alone,
                           "accuracy": acc, "shared_sha256": digest}, f)

    local_job.run_main("cnn_rnn_share", run)


if __name__ == "__main__":
    main()
