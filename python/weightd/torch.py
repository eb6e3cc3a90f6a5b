"""Sharing chosen parameters of a torch ``nn.Module`` through weightd.

Add three lines to a training loop::

    import weightd, weightd.torch
    ps = weightd.Client("127.0.0.1:7070", worker_id="cnn-0")
    shared = weightd.torch.SharedParameters(
        ps, model, share=r"^(encoder|head)\\.", every=50)
    for x, y in batches:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        shared.step(weight=len(x))   # every 50 steps: one averaging round

``SharedParameters`` joins the chosen parameters when it is made (a tensor
the server already holds is written into your parameter: a model that joins
late starts from the shared weights), then every ``every`` calls of
``step()`` pushes them, waits for the round, and writes the average into
``param.data`` in place (FedAvg: weighted by the samples given to ``step``
since the last round). ``sync()`` runs a round now. ``policy=`` declares
how the server combines them instead (e.g. ``"optimizer=adam lr=0.01"``:
FedAdam; docs/algorithms.md).

Optimizer state: an averaging round replaces the values of the shared
parameters and nothing else. The optimizer's state (SGD momentum, Adam's
moment estimates) stays local and is not reset or averaged: it describes
this worker's recent gradients, which stay a good estimate after the
parameters moved to a nearby average, and resetting it would throw away
its warm-up every round. Averaging it too would double the traffic (Adam:
triple) for little gain at the averaging periods FedAvg uses. If you
average rarely and with large learning rates, reset the optimizer
yourself after ``step()`` returns True.
"""

from __future__ import annotations

import re
import typing

import torch

from . import Client

__all__ = ["SharedParameters"]

Names = typing.Union[None, str, typing.Mapping[str, str],
                     typing.Callable[[str], str]]


class SharedParameters:
    """Chosen parameters of ``module``, shared through ``client``.

    ``share``: which parameters, by their ``named_parameters()`` names: None
    for all, a regex (``re.search``), or a list of names (each must exist).
    ``names``: the shared tensor name each gets on the server, so that two
    different models can map their own layers onto one shared tensor: None
    (the parameter's own name), a prefix string (``prefix + name``), a dict
    (parameter name -> shared name; names it lacks keep their own), or a
    callable. ``every``: local steps between averaging rounds (>= 1).
    ``policy``: how the server combines the rounds of these tensors
    (docs/algorithms.md), passed to ``Client.join``: None (declare none:
    each tensor's, or the server's default), one text for every shared
    tensor (e.g. ``"optimizer=adam lr=0.01"``), or a dict of shared tensor
    name -> text. The rounds push weights, so a server optimizer steps by
    the aggregated weights minus the tensor's value (the FedOpt update).

    Shared parameters must be CPU float32 contiguous tensors; they are
    checked, and joined, when this object is made.
    """

    def __init__(self, client: Client, module: torch.nn.Module, *,
                 share: typing.Union[None, str, typing.Iterable[str]] = None,
                 names: Names = None, every: int = 1,
                 policy: typing.Union[None, str,
                                      typing.Mapping[str, str]] = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r}: expected an int >= 1")
        self._client = client
        self._every = every
        self._steps = 0
        self._weight = 0.0
        self._rounds = 0
        params = dict(module.named_parameters())
        chosen = _choose(params, share)
        if not chosen:
            raise ValueError(f"share={share!r} matches no parameter of the "
                             f"module (it has {sorted(params)})")
        self._tensors = {}  # Shared name -> the parameter's data.
        self._names = {}    # Parameter name -> shared name.
        for name in chosen:
            shared = _shared_name(name, names)
            if shared in self._tensors:
                raise ValueError(
                    f"parameters {self._param_of(shared)} and {name} would "
                    f"both be shared as {shared}")
            self._tensors[shared] = params[name].data
            self._names[name] = shared
        client.join(self._tensors, policy=policy)

    @property
    def names(self) -> typing.Dict[str, str]:
        """Parameter name -> shared tensor name, for every shared one."""
        return dict(self._names)

    @property
    def rounds(self) -> int:
        """Averaging rounds this object took part in."""
        return self._rounds

    def step(self, weight: float = 1.0) -> bool:
        """Call after each optimizer step, with the samples it used. Every
        ``every``-th call runs an averaging round (see ``sync``) and returns
        True; the others return False at once."""
        if not weight > 0:
            raise ValueError(f"weight={weight!r}: expected > 0")
        self._steps += 1
        self._weight += weight
        if self._steps % self._every != 0:
            return False
        self.sync()
        return True

    def sync(self, weight: typing.Optional[float] = None) -> None:
        """Runs an averaging round now: pushes the shared parameters with
        ``weight`` (default: the weights given to ``step`` since the last
        round, or 1), waits for the round and writes the average into them."""
        if weight is None:
            weight = self._weight if self._weight > 0 else 1.0
        with torch.no_grad():
            self._client.push_pull(self._tensors, weight=weight)
        self._weight = 0.0
        self._rounds += 1

    def _param_of(self, shared: str) -> str:
        return next(p for p, s in self._names.items() if s == shared)


def _choose(params: typing.Mapping[str, torch.nn.Parameter],
            share) -> typing.List[str]:
    if share is None:
        return list(params)
    if isinstance(share, str):
        pattern = re.compile(share)
        return [name for name in params if pattern.search(name)]
    chosen = list(share)
    missing = [name for name in chosen if name not in params]
    if missing:
        raise ValueError(f"share: no parameter named {missing} (the module "
                         f"has {sorted(params)})")
    return chosen


def _shared_name(name: str, names: Names) -> str:
    if names is None:
        return name
    if isinstance(names, str):
        return names + name
    if isinstance(names, typing.Mapping):
        return names.get(name, name)
    return names(name)
