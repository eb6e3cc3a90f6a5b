"""weightd.torch.SharedParameters end to end: two worker processes train a
small nn.Module on synthetic data of their own, sharing its body and keeping
its head private. After each averaging round the shared parameters are
bit-identical across the workers and the private ones are not; the loss
goes down."""

import pytest

ROUNDS = 10
EVERY = 4

TORCH_WORKER = """
    import collections, hashlib, json, sys
    import torch
    import weightd, weightd.torch

    address, rank, rounds, every = sys.argv[1], *map(int, sys.argv[2:5])
    torch.set_num_threads(1)
    # One task for both workers (the teacher), data and the private head's
    # initial values of their own.
    teacher = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(100 + rank)
    x = torch.randn(512, 8)
    y = (x @ teacher).argmax(dim=1)
    model = torch.nn.Sequential(collections.OrderedDict(
        body=torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh()),
        head=torch.nn.Linear(32, 3)))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def digest(prefix):
        h = hashlib.sha256()
        for name, p in model.named_parameters():
            if name.startswith(prefix):
                h.update(p.detach().numpy().tobytes())
        return h.hexdigest()

    def loss():
        with torch.no_grad():
            return loss_fn(model(x), y).item()

    with weightd.Client(address, worker_id=f"torch-{rank}",
                        call_timeout=30) as ps:
        shared = weightd.torch.SharedParameters(
            ps, model, share=r"^body\\.", names="enc/", every=every)
        print("names", json.dumps(shared.names), flush=True)
        ps.barrier("start", 2)  # Both joined: every round averages both.
        print("start", json.dumps({"loss": loss(), "body": digest("body."),
                                   "head": digest("head.")}), flush=True)
        step = 0
        while shared.rounds < rounds:
            i = (step * 32) % 512
            opt.zero_grad()
            loss_fn(model(x[i:i + 32]), y[i:i + 32]).backward()
            opt.step()
            step += 1
            if shared.step(weight=32):
                print("round", json.dumps({
                    "round": shared.rounds, "version": ps.version("enc/body.0.weight"),
                    "body": digest("body."), "head": digest("head."),
                    "loss": loss()}), flush=True)
"""


def test_shared_body_is_identical_after_each_round_and_head_is_private(
        server, spawn):
    workers = [spawn(TORCH_WORKER, server, rank, ROUNDS, EVERY)
               for rank in range(2)]
    for w in workers:
        assert w.expect("names ", timeout=60) == {
            "body.0.weight": "enc/body.0.weight",
            "body.0.bias": "enc/body.0.bias"}
    starts = [w.expect("start ", timeout=30) for w in workers]
    # Join gave the second worker the first one's body: equal from the
    # start; the heads were initialised apart.
    assert starts[0]["body"] == starts[1]["body"]
    assert starts[0]["head"] != starts[1]["head"]
    last = None
    for r in range(1, ROUNDS + 1):
        a, b = (w.expect("round ", timeout=30) for w in workers)
        assert a["round"] == b["round"] == r
        assert a["version"] == b["version"] == r
        assert a["body"] == b["body"], f"round {r}: shared bodies differ"
        assert a["head"] != b["head"], f"round {r}: private heads are equal"
        if last is not None:
            assert a["body"] != last, f"round {r}: the body did not change"
        last = a["body"]
        final = (a["loss"], b["loss"])
    for w in workers:
        assert w.wait(timeout=20) == 0, w.err()
    for start, end in zip(starts, final):
        print(f"loss {start['loss']:.3f} -> {end:.3f}")
        assert end < 0.6 * start["loss"], (start["loss"], end)
