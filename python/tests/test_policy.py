"""A tensor's policy from Python (docs/algorithms.md): declared at join, as
one text for every tensor or per tensor; what the server then computes, and
what it refuses (the `server` fixture: conftest.py)."""

import threading

import numpy as np
import pytest

import weightd


def test_a_declared_policy_is_the_tensors_and_its_rule_applies(server):
    a = {"enc": np.zeros(3, np.float32), "head": np.zeros(1, np.float32)}
    b = {"enc": np.zeros(3, np.float32), "head": np.zeros(1, np.float32)}
    c = {"enc": np.zeros(3, np.float32)}
    with weightd.Client(server, worker_id="a") as ca, \
            weightd.Client(server, worker_id="b") as cb, \
            weightd.Client(server, worker_id="c") as cc:
        ca.join(a, policy={"enc": "aggregator=median",
                           "head": "optimizer=momentum lr=1 momentum=0.5"})
        cb.join(b, policy="")  # Names none: takes each tensor's.
        cc.join(c)
        # enc: the median of 1, 2 and 100 is 2 (the mean would be 34.3).
        # head: u = mean(4, 6) - 0 = 5; m = 0.5 * 0 + 5; value 0 + 1 * 5.
        pushes = [
            threading.Thread(target=ca.push_pull, args=(
                {"enc": np.full(3, 1, np.float32),
                 "head": np.full(1, 4, np.float32)},)),
            threading.Thread(target=cb.push_pull, args=(
                {"enc": np.full(3, 2, np.float32),
                 "head": np.full(1, 6, np.float32)},)),
        ]
        for t in pushes:
            t.start()
        got = {"enc": np.full(3, 100, np.float32)}
        cc.push_pull(got)
        for t in pushes:
            t.join(timeout=30)
            assert not t.is_alive()
        np.testing.assert_array_equal(got["enc"], [2, 2, 2])
        head = {"head": np.zeros(1, np.float32)}
        ca.pull(head)
        np.testing.assert_array_equal(head["head"], [5])


def test_a_policy_that_differs_or_cannot_be_is_refused(server):
    with weightd.Client(server, worker_id="d") as cd, \
            weightd.Client(server, worker_id="e") as ce:
        cd.join({"w": np.zeros(2, np.float32)}, policy="optimizer=adam")
        with pytest.raises(weightd.AlreadyExists, match="exists with policy"):
            ce.join({"w": np.zeros(2, np.float32)}, policy="optimizer=yogi")
        with pytest.raises(weightd.InvalidArgument, match="not key=value"):
            ce.join({"w": np.zeros(2, np.float32)}, policy="adam")
        with pytest.raises(weightd.InvalidArgument, match="not one of"):
            ce.join({"v": np.zeros(2, np.float32)}, policy="optimizer=sgd")
        with pytest.raises(ValueError, match="not joined"):
            ce.join({"w": np.zeros(2, np.float32)}, policy={"x": "lr=1"})
        ce.join({"w": np.zeros(2, np.float32)}, policy="optimizer=adam")


def test_shared_parameters_declare_their_policy(server):
    torch = pytest.importorskip("torch")
    import weightd.torch
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1)
        model.bias.fill_(0)
    with weightd.Client(server, worker_id="t") as ct, \
            weightd.Client(server, worker_id="u") as cu:
        shared = weightd.torch.SharedParameters(
            ct, model, names="m/",
            policy="optimizer=momentum lr=2 momentum=0")
        with pytest.raises(weightd.AlreadyExists, match="exists with policy"):
            cu.join({"m/weight": np.zeros((1, 2), np.float32)},
                    policy="optimizer=plain")
        # The only worker pushes weight 1 + 1 = 2: u = 2 - 1 = 1 and the
        # value 1 + 2 x 1 = 3 (plain, the FedAvg default, would give 2).
        with torch.no_grad():
            model.weight.add_(1)
        shared.sync()
        assert model.weight.tolist() == [[3.0, 3.0]]
