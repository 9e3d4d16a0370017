"""Routers: the replica each arriving request joins, or a rejection.

A router is built once per run (``RouterSpec.make(context)``) and called once per
request, in arrival order (instance order), as ``route(view)`` with a read-only
:class:`ClusterView`; it returns a replica id ``0..C-1`` or a :class:`Reject`
with a reason (DESIGN.md, "Rejection": the request is counted with its reason,
excluded from latency metrics and a miss for SLOs).

Built-in routers
----------------
``round-robin``
    Request ``i`` (instance position) goes to replica ``i mod C``.
``static``
    The assignment given to ``simulate(..., assignment=...)``.
``least-outstanding``
    The replica with the fewest unfinished requests (dispatched to it and not
    complete), ties to the lowest id.
``least-kv``
    The replica holding the fewest KV tokens, ties to the fewer unfinished
    requests, then to the lowest id. (The second key matters for simultaneous
    arrivals: a request just dispatched holds no KV until it is admitted, so
    without it every request of a burst would go to one replica.)
``least-queued``
    The replica with the fewest *queued* requests (:meth:`ClusterView.queued`:
    unfinished and not in the iteration in flight), ties to the lowest id.
    DistServe's decode routing: simdistserve's
    ``Scheduler._find_best_worker_and_queue`` takes the decode worker with the
    shortest ``decode_queue``, which holds neither the batch in flight nor the
    finished requests (``simdistserve/base/scheduler.py``, ``base/worker.py``
    ``_enter_decodes``). On prefill replicas it is ``len(prefill_queue)``
    without DistServe's ``_prefill_ips``: use ``least-outstanding`` there.

A router that declares ``stateless = True`` reads nothing of the replicas' state
(``round-robin``, ``static``): the evaluator then routes every request up front
and runs each replica alone, which gives the same result as running them jointly
in time (the replicas do not interact) at a fraction of the cost. Such a router
may also route the whole instance at once with ``route_all(instance)``, an array
of replica ids, instead of a call per request. The others read the state at the
first iteration boundary at or after the arrival (:mod:`lsched.evaluator.cluster`
says how exactly).

Register your own with :func:`register_router`::

    class ShortestQueue:
        def route(self, view):
            return min(range(view.replicas), key=view.outstanding)

    lsched.register_router("shortest-queue", lambda params: ShortestQueue())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.registry import Registry


@dataclass(frozen=True, slots=True)
class Reject:
    """A router's decision not to serve a request, with the reason recorded."""

    reason: str


@dataclass(frozen=True, slots=True)
class RouterContext:
    """What a router knows of the cluster when it is built.

    Attributes
    ----------
    replicas
        Number of replicas ``C`` over all pools.
    pool
        The pool name of every replica.
    kv_capacity_tokens
        The KV capacity of every replica, tokens.
    assignment
        A replica id per request given to ``simulate`` (for ``static``), or None.
    """

    replicas: int
    pool: tuple[str, ...]
    kv_capacity_tokens: tuple[int, ...]
    assignment: npt.NDArray[np.int64] | None = None


class ClusterView:
    """What a router may see when request ``request`` arrives at ``now_s``.

    The arriving request's own columns (``prompt_tokens``, and where the instance
    has them ``predicted_output_tokens``, ``tenant``, ``priority``; never its true
    output length) and, per replica ``c``, :meth:`outstanding` and
    :meth:`kv_tokens` (all of them: :attr:`loads`) at the first iteration
    boundary at or after ``now_s``. The
    per-replica state is computed on first use, for every replica at once; a
    stateless router never pays for it (and may not read it: the replicas have
    not run yet). :meth:`queued` is read at ``now_s`` itself.
    """

    __slots__ = (
        "_cache",
        "_queued",
        "_queued_cache",
        "_state",
        "context",
        "now_s",
        "predicted_output_tokens",
        "priority",
        "prompt_tokens",
        "request",
        "tenant",
    )

    def __init__(
        self,
        context: RouterContext,
        request: int,
        now_s: float,
        prompt_tokens: int,
        state: Callable[[int], tuple[int, int]] | None,
        *,
        predicted_output_tokens: int | None = None,
        tenant: str | None = None,
        priority: int | None = None,
        queued: Callable[[int], int] | None = None,
    ) -> None:
        self.context = context
        self.request = request
        self.now_s = now_s
        self.prompt_tokens = prompt_tokens
        self.predicted_output_tokens = predicted_output_tokens
        self.tenant = tenant
        self.priority = priority
        self._state = state
        self._cache: list[tuple[int, int]] | None = None
        self._queued = queued
        self._queued_cache: list[int] | None = None

    @property
    def replicas(self) -> int:
        """Number of replicas ``C``."""
        return self.context.replicas

    @property
    def loads(self) -> list[tuple[int, int]]:
        """``(outstanding, kv_tokens)`` of every replica, in replica order."""
        if self._cache is None:  # every replica at once: routers compare them all
            if self._state is None:
                raise RuntimeError(
                    "a router that declares stateless = True read the replicas' state"
                )
            self._cache = [self._state(c) for c in range(self.context.replicas)]
        return self._cache

    def outstanding(self, replica: int) -> int:
        """Requests dispatched to ``replica`` and not complete."""
        return self.loads[replica][0]

    def kv_tokens(self, replica: int) -> int:
        """KV tokens ``replica`` holds."""
        return self.loads[replica][1]

    def queued(self, replica: int) -> int:
        """Requests dispatched to ``replica``, not complete and not in the
        iteration in flight at ``now_s`` (one that started before and ends after
        it): those waiting, between iterations, or (decode replicas of a
        disaggregated cluster) on their way to it."""
        if self._queued_cache is None:
            if self._queued is None:
                raise RuntimeError(
                    "a router that declares stateless = True read the replicas' state"
                )
            self._queued_cache = [self._queued(c) for c in range(self.replicas)]
        return self._queued_cache[replica]


class Router(Protocol):
    """Sends each arrival to a replica (or rejects it)."""

    def route(self, view: ClusterView) -> int | Reject:
        """The replica id for ``view.request``, or a :class:`Reject`."""
        ...


def is_stateless(router: object) -> bool:
    """Whether ``router`` declares it reads no replica state."""
    return getattr(router, "stateless", False) is True


# -- the built-in routers ------------------------------------------------------------


class RoundRobin:
    """Request ``i`` to replica ``i mod C``."""

    stateless = True

    def __init__(self, context: RouterContext) -> None:
        self.replicas = context.replicas

    def route(self, view: ClusterView) -> int:
        return view.request % view.replicas

    def route_all(self, instance: Any) -> npt.NDArray[np.int64]:
        return np.arange(len(instance), dtype=np.int64) % self.replicas


class Static:
    """The assignment given to ``simulate``."""

    stateless = True

    def __init__(self, params: Any, context: RouterContext) -> None:
        if context.assignment is None:
            raise InputError(
                "router 'static' needs an assignment (one replica id per request)",
                field="router",
            )
        self.assignment = context.assignment

    def route(self, view: ClusterView) -> int:
        return int(self.assignment[view.request])

    def route_all(self, instance: Any) -> npt.NDArray[np.int64]:
        return self.assignment


class LeastOutstanding:
    """The replica with the fewest unfinished requests, ties to the lowest id."""

    def route(self, view: ClusterView) -> int:
        return min((u, c) for c, (u, _) in enumerate(view.loads))[1]


class LeastKv:
    """The replica holding the fewest KV tokens, then fewest unfinished, then id."""

    def route(self, view: ClusterView) -> int:
        return min((kv, u, c) for c, (u, kv) in enumerate(view.loads))[2]


class LeastQueued:
    """The replica with the fewest queued requests (unfinished and not in its
    iteration in flight), ties to the lowest id: DistServe's decode routing."""

    def route(self, view: ClusterView) -> int:
        return min(range(view.replicas), key=view.queued)


#: Router name -> parameters and constructor.
REGISTRY = Registry("router")
REGISTRY.register(
    "round-robin", lambda params, context: RoundRobin(context), None, RoundRobin.__doc__
)
REGISTRY.register("static", Static, None, Static.__doc__)
REGISTRY.register(
    "least-outstanding",
    lambda params: LeastOutstanding(),
    None,
    LeastOutstanding.__doc__,
)
REGISTRY.register("least-kv", lambda params: LeastKv(), None, LeastKv.__doc__)
REGISTRY.register(
    "least-queued", lambda params: LeastQueued(), None, LeastQueued.__doc__
)


@dataclass(frozen=True)
class RouterSpec:
    """A named router with its parameters; ``make()`` gives a fresh router."""

    name: str
    params: Any

    def make(self, context: RouterContext) -> Router:
        """A fresh router for the cluster ``context`` describes."""
        return REGISTRY[self.name].make(self.params, context)

    @property
    def label(self) -> str:
        """``name`` or ``name:key=value,...``."""
        return REGISTRY.label(self.name, self.params)


def parse_router(text: str) -> RouterSpec:
    """Parse ``NAME[:key=value,...]`` into a :class:`RouterSpec`."""
    return RouterSpec(*REGISTRY.parse(text))


def register_router(
    name: str,
    build: Callable[..., Router],
    params: type | None = None,
    summary: str = "",
    *,
    replace: bool = False,
) -> None:
    """Register a router under ``name``, for ``--router NAME``, cluster files and
    :func:`parse_router`.

    ``build(params, context)`` (or ``build(params)``) returns a fresh router;
    ``context`` is the :class:`RouterContext`. A router has ``route(view)``
    returning a replica id or :class:`Reject`; it may declare ``stateless = True``
    when it reads no replica state. See :meth:`lsched.registry.Registry.register`.
    """
    REGISTRY.register(name, build, params, summary, replace=replace)
