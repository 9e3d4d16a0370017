"""Replica dispatch: which of the ``C`` replicas each arriving request joins.

Rules (``simulate(..., dispatch=NAME)``, ``lsched simulate --dispatch NAME``)
----------------------------------------------------------------------------
``round-robin``
    Request ``i`` (instance position, arrival order) goes to replica ``i mod C``.
    The default; no replica state is needed, so the replicas are simulated one
    after another (the fast path).
``static``
    An assignment given from outside (``simulate(..., assignment=...)``); the fast
    path too.
``least-outstanding``
    Each arrival goes to the replica with the fewest unfinished requests
    (dispatched to it and not complete), ties to the lowest replica id.
``least-kv``
    Each arrival goes to the replica holding the fewest KV tokens, ties to the
    fewer unfinished requests, then to the lowest id. (The second key matters for
    simultaneous arrivals: a request just dispatched holds no KV until it is
    admitted, so without it every request of a burst would go to one replica.)

When the rule looks at the replicas' state
-------------------------------------------
The state-dependent rules need the replicas simulated *jointly* in time. Arrivals
are taken in instance order; before arrival ``i`` at time ``a_i`` is dispatched,
every replica's engine is advanced as far as the arrival cannot change it: every
iteration that starts at a boundary ``t`` with ``a_i > t + ARRIVAL_TOLERANCE_S``
(where the engine would not see the request yet) runs. A replica then sits at its
first boundary at or after ``a_i`` (where its policy would first see the request),
or in a held decode stretch or an idle spell that spans ``a_i`` and is not yet
committed. The state the rule reads is the replica's state **at that first
boundary at or after** ``a_i`` (for a pending held stretch it is computed in
closed form: ``j`` more iterations, ``j * d`` more KV tokens, no completion
before the stretch's end). A real router reads the state one iteration earlier at
most; the difference is at most one iteration's completions and KV growth.

Exactness. A held stretch (or an idle spell waiting on a clock) is committed only
once it is known not to be cut by a request dispatched to its own replica: it runs
in one piece exactly as in the one-replica-at-a-time path, and is cut at an
arrival only when that arrival joins its replica. So the joint simulation with
round-robin dispatch gives bit-for-bit the same per-request times as the fast path
(``tests/test_dispatch.py`` checks it).

Engine arrays. Each replica's engine is built with room for every request (the
arrays have one entry per instance request, ``+inf`` arrival times at the unused
tail, which the engine never reaches); dispatching writes the next entry. A policy
sees only its arrived requests' entries, as the policy contract says. ``vtc``
reads the whole tenant column at its first decision, so it is refused here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lsched.errors import InputError
from lsched.evaluator.engine import ReplicaEngine
from lsched.evaluator.stretch import DecodeStretch
from lsched.instance import Instance
from lsched.policies import ARRIVAL_TOLERANCE_S, Batch, PolicySpec
from lsched.profile import DeploymentProfile

#: Dispatch rules that need the replicas simulated jointly.
JOINT_RULES = ("least-outstanding", "least-kv")
#: Every dispatch rule ``simulate`` accepts.
DISPATCH_RULES = ("round-robin", "static", *JOINT_RULES)
#: Policies that read entries of requests that have not arrived yet.
_LOOKAHEAD_POLICIES = frozenset({"vtc"})


def check_dispatch(dispatch: str, has_assignment: bool) -> str:
    """The dispatch rule to use; InputError on an unknown or conflicting one."""
    if dispatch not in DISPATCH_RULES:
        raise InputError(
            f"got {dispatch!r}; expected one of {', '.join(DISPATCH_RULES)}",
            field="dispatch",
        )
    if dispatch == "static" and not has_assignment:
        raise InputError(
            "dispatch 'static' needs an assignment (one replica id per request)",
            field="dispatch",
        )
    if dispatch in JOINT_RULES and has_assignment:
        raise InputError(
            f"dispatch {dispatch!r} chooses replicas itself; got an assignment too",
            field="dispatch",
        )
    return dispatch


class JointEngine(ReplicaEngine):
    """A replica engine that receives requests while it runs.

    :meth:`advance` runs everything an arrival at ``t`` cannot change;
    :meth:`add` dispatches a request to it; :meth:`state_at` is what the dispatch
    rule reads. Reading and committing stretches reuses
    :meth:`ReplicaEngine._stretch_length` and :meth:`ReplicaEngine._decode_stretch`.
    """

    def __init__(
        self,
        capacity: int,
        instance: Instance,
        profile: DeploymentProfile,
        spec: PolicySpec,
        *,
        log: bool,
        on_finished: Callable[[int], None] | None,
    ) -> None:
        pred = instance.predicted_output_tokens
        # the arrays the engine shows read-only views of; add() writes into them
        self._pred = None if pred is None else np.ones(capacity, dtype=np.int64)
        self._prio = (
            None
            if instance.priority is None
            else np.zeros(capacity, dtype=instance.priority.dtype)
        )
        self._tenant = (
            None
            if instance.tenant is None
            else np.full(capacity, instance.tenant[0], dtype=instance.tenant.dtype)
        )
        super().__init__(
            np.full(capacity, np.inf),
            np.ones(capacity, dtype=np.int64),
            np.ones(capacity, dtype=np.int64),
            self._pred,
            profile,
            spec.make(),
            log=log,
            on_finished=on_finished,
            priority=self._prio,
            tenant=self._tenant,
        )
        self.m = 0
        self.now_s = -math.inf
        self.ids: list[int] = []  # instance position of every local request
        self.pending: Batch | None = None  # a held or empty batch not yet run

    def add(self, instance: Instance, i: int) -> None:
        """Dispatch request ``i`` of ``instance`` to this replica."""
        k = self.m
        self.arrival_s[k] = instance.arrival_s[i]
        self.prompt[k] = instance.prompt_tokens[i]
        self.output[k] = instance.output_tokens[i]
        if self._pred is not None:
            self._pred[k] = instance.predicted_output_tokens[i]  # type: ignore[index]
        if self._prio is not None:
            self._prio[k] = instance.priority[i]  # type: ignore[index]
        if self._tenant is not None:
            self._tenant[k] = instance.tenant[i]  # type: ignore[index]
        self.m += 1
        self.ids.append(i)

    # -- advancing -----------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Run every step that an arrival at ``t`` (``inf``: none) cannot change."""
        while True:
            if self.pending is not None:
                if not self._resume(t):
                    return
                continue
            if self.done >= self.m or t <= self.now_s + ARRIVAL_TOLERANCE_S:
                return
            self._arrive()
            if not self.running and not self._has_waiting():
                if self.num_arrived == self.m:
                    return  # idle until a request is dispatched here
                self.now_s = max(self.now_s, float(self.arrival_s[self.num_arrived]))
                continue
            batch = self.policy.decide(self._view())
            run = len(self.log.runs) if self.log is not None else -1
            self._preempt(batch.preempt, run)
            if batch.is_empty:
                self.pending = batch
                continue
            grow = self._check(batch)
            self._admit(batch.prefill)
            if batch.hold and len(batch.prefill) == 0 and len(batch.preempt) == 0:
                self.pending = batch
            else:
                self._iteration(batch, grow)

    def _cut(self, t: float) -> tuple[DecodeStretch, int, int]:
        """The pending stretch, its length and its length if cut at ``t``."""
        assert self.pending is not None
        stretch, n = self._stretch_length(self.pending)
        j = n
        if n > 1 and t < math.inf:
            j = stretch.iterations_until((t - ARRIVAL_TOLERANCE_S) - self.now_s, n)
        return stretch, n, j

    def _resume(self, t: float) -> bool:
        """Commit the pending batch if ``t`` cannot change it; True if committed."""
        batch = self.pending
        assert batch is not None
        if batch.is_empty:
            if self.num_arrived < self.m:
                self._idle(batch)  # a known arrival of its own comes first
            elif batch.wake_at_s is not None and batch.wake_at_s > self.now_s:
                if batch.wake_at_s > t:
                    return False  # a request dispatched here at t would come first
                self.now_s = batch.wake_at_s
            elif t < math.inf:
                return False  # waits for a request to be dispatched here
            else:
                self._idle(batch)  # nothing left to wait for: the stall error
        else:
            stretch, n, j = self._cut(t)
            if j < n:
                return False
            self._decode_stretch(batch, (stretch, n))
        self.pending = None
        return True

    def state_at(self, t: float) -> tuple[int, int]:
        """(unfinished requests, KV tokens held) at the first boundary at or after
        ``t``, after :meth:`advance` to ``t``."""
        unfinished = self.m - self.done
        batch = self.pending
        if batch is None or batch.is_empty:
            return unfinished, self.kv.held_tokens
        _, _, j = self._cut(t)  # j < n: no completion before the boundary
        return unfinished, self.kv.held_tokens + j * len(batch.decode)


def _choose(rule: str, engines: list[JointEngine], i: int, t: float) -> int:
    if rule == "round-robin":
        return i % len(engines)
    states = [e.state_at(t) for e in engines]
    if rule == "least-outstanding":
        keys = [(u, c) for c, (u, _) in enumerate(states)]
    else:  # least-kv
        keys = [(kv, u, c) for c, (u, kv) in enumerate(states)]
    return min(keys)[-1]


def run_joint(
    instance: Instance,
    profile: DeploymentProfile,
    spec: PolicySpec,
    replicas: int,
    rule: str,
    *,
    log: bool = False,
    on_finished: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[JointEngine]]:
    """Simulate all replicas together, dispatching each arrival by ``rule``.

    ``rule`` is ``round-robin`` (for checking against the fast path) or one of
    :data:`JOINT_RULES`. Returns the replica of every request and the engines
    (engine ``c``'s local request ``k`` is instance request ``engines[c].ids[k]``).

    Raises
    ------
    InputError
        For a policy that reads requests before they arrive (``vtc``).
    PolicyError
        As :func:`lsched.evaluator.simulate`.
    """
    if spec.name in _LOOKAHEAD_POLICIES:
        raise InputError(
            f"policy {spec.name!r} reads every request's tenant at its first "
            "decision, so it cannot run with state-dependent dispatch; use "
            "round-robin or static",
            field="dispatch",
        )
    n = len(instance)
    engines = [
        JointEngine(n, instance, profile, spec, log=log, on_finished=on_finished)
        for _ in range(replicas)
    ]
    where = np.zeros(n, dtype=np.int64)
    arrival = instance.arrival_s
    for i in range(n):
        t = float(arrival[i])
        for engine in engines:
            engine.advance(t)
        c = _choose(rule, engines, i, t)
        engines[c].add(instance, i)
        where[i] = c
    for engine in engines:
        engine.advance(math.inf)
    return where, engines
