"""The slot model: data of one offline scheduling problem, shared by both backends.

Jaillet et al. 2025's hindsight problem (DESIGN.md, "Offline formulations and
bounds"), generalised to heterogeneous prompts, KV blocks, a batch cap, a token
budget and arrivals. Time is counted in unit slots (one iteration each).

Data
----
Request ``i = 0..n-1``: arrival ``a_i`` (slots, maybe fractional), release slot
``r_i = ceil(a_i)``, prompt ``s_i``, output ``o_i``, integer weight ``w_i >= 1``.
Deployment: KV capacity ``M`` blocks of ``b`` tokens, batch cap ``N`` (requests per
slot), token budget ``B`` (tokens processed per slot); ``N`` and ``B`` optional.

Decisions and rules
-------------------
An integer start slot ``S_i >= r_i`` per request. Request i prefills its whole
prompt in slot ``S_i``, decodes in slots ``S_i + 1 .. S_i + o_i - 1`` and completes
at ``E_i = S_i + o_i``. In slot ``S_i + j`` (``0 <= j < o_i``) it holds

    k_ij = ceil((s_i + j) / b)                      KV blocks (the KV table)

and processes ``s_i`` tokens if ``j = 0``, one otherwise. For every slot ``t``::

    sum_{i : S_i <= t < E_i} k_{i, t - S_i}         <= M        (KV)
    #{i : S_i <= t < E_i}                            <= N        (batch cap)
    #{i : S_i <= t < E_i} + sum_{i : S_i = t} (s_i - 1) <= B    (token budget)

The table ``k_ij`` is nondecreasing in ``j`` for every request (KV only grows while
a request runs); the formulations use that, never the formula above, so any
nondecreasing table would do.

Objectives (all integer-valued up to a constant)
------------------------------------------------
::

    latency   sum_i w_i (E_i - a_i)        = sum_i w_i E_i - sum_i w_i a_i
    ttft      sum_i w_i (S_i + 1 - a_i)    = sum_i w_i S_i + sum_i w_i (1 - a_i)
    makespan  max_i E_i - min_i a_i

Solvers minimise the integer part (``sum w E``, ``sum w S`` or ``max E``); the
constant :attr:`SlotProblem.objective_offset` is added back when reporting, so
"optimal" is decided on integers (an absolute gap below one unit).

From seconds to slots
---------------------
An instance whose arrivals are in seconds, on a profile whose iterations do not
last one unit, is mapped to slots by one slot length ``tau`` (seconds):
``a_i / tau``. By default ``tau`` is the profile's iteration time of a decode-only
batch holding one request at the instance's mean context ``mean(s) + mean(o) / 2``
(the shortest iteration a typical request sees). This is a modelling choice, not
an identity: the slot model prices every iteration the same, and the timed model
prices them by the cost model; ``slot_s`` overrides ``tau``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int, check_type
from lsched.errors import InputError
from lsched.evaluator.fixed import check_unit_slots
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, batch_features, load_profile

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

Objective = Literal["latency", "ttft", "makespan"]
OBJECTIVES: tuple[str, ...] = ("latency", "ttft", "makespan")


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class SlotProblem:
    """One slot-model instance, validated at construction.

    Build it with :meth:`from_instance`; the constructor takes the arrays directly.

    Parameters
    ----------
    arrival
        ``a_i`` in slots (float64, >= 0).
    prompt_tokens, output_tokens
        ``s_i >= 1`` and ``o_i >= 1``.
    weight
        ``w_i >= 1`` (integers), used by the latency and TTFT objectives.
    kv_capacity_blocks
        ``M``.
    block_tokens
        ``b``.
    max_num_seqs, max_num_batched_tokens
        ``N`` and ``B``, or ``None`` for no limit.
    objective
        ``"latency"``, ``"ttft"`` or ``"makespan"``.
    name
        For messages and outputs.

    Raises
    ------
    InputError
        On a bad value, or a request that cannot run even alone (its peak KV above
        ``M``, its prompt above ``B``), naming the field and the request.
    """

    arrival: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    weight: IntArray
    kv_capacity_blocks: int
    block_tokens: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    objective: str = "latency"
    name: str = "slot-problem"
    release: IntArray = field(init=False)

    def __post_init__(self) -> None:
        arrival = np.asarray(self.arrival, dtype=np.float64)
        n = len(arrival)
        if arrival.ndim != 1 or n == 0:
            raise InputError("expected a non-empty 1-D array", field="arrival")
        if not np.all(np.isfinite(arrival)) or np.any(arrival < 0):
            i = int(np.flatnonzero(~np.isfinite(arrival) | (arrival < 0))[0])
            raise InputError(
                f"request {i}: got {arrival[i]}; expected a finite slot >= 0",
                field="arrival",
            )
        columns = {"arrival": arrival}
        for name in ("prompt_tokens", "output_tokens", "weight"):
            raw = np.asarray(getattr(self, name))
            if raw.shape != (n,) or raw.dtype.kind not in "iu":
                raise InputError(
                    f"got shape {raw.shape} dtype {raw.dtype}; expected {n} integers",
                    field=name,
                )
            if np.any(raw < 1):
                i = int(np.flatnonzero(raw < 1)[0])
                raise InputError(
                    f"request {i}: got {raw[i]}; expected >= 1", field=name
                )
            columns[name] = raw.astype(np.int64)
        for name in ("kv_capacity_blocks", "block_tokens"):
            check_int(getattr(self, name), name, 1)
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"got {self.objective!r}; expected one of {', '.join(OBJECTIVES)}",
                field="objective",
            )
        for name, value in columns.items():
            object.__setattr__(self, name, _frozen(value))
        object.__setattr__(self, "release", _frozen(np.ceil(arrival).astype(np.int64)))
        peak = self.peak_blocks
        if np.any(peak > self.kv_capacity_blocks):
            i = int(np.argmax(peak))
            raise InputError(
                f"request {i} needs {peak[i]} KV blocks at its last token (prompt "
                f"{self.prompt_tokens[i]} + output {self.output_tokens[i]} - 1 "
                "tokens); "
                f"expected <= the capacity of {self.kv_capacity_blocks}: the "
                "instance is infeasible",
                field="kv_capacity_blocks",
            )
        budget = self.max_num_batched_tokens
        if budget is not None and np.any(self.prompt_tokens > budget):
            i = int(np.argmax(self.prompt_tokens))
            raise InputError(
                f"request {i} has a {self.prompt_tokens[i]}-token prompt; the slot "
                f"model prefills it in one slot, so expected <= {budget}: the "
                "instance is infeasible",
                field="max_num_batched_tokens",
            )

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_instance(
        cls,
        instance: Instance,
        profile: DeploymentProfile,
        *,
        objective: str = "latency",
        weight: npt.ArrayLike | None = None,
        slot_s: float | None = None,
    ) -> SlotProblem:
        """The slot problem of ``instance`` on one replica of ``profile``.

        Parameters
        ----------
        instance
            Requests; arrivals in seconds (or in slots on a unit-slot profile).
        profile
            KV capacity, block size and batch limits; its iteration time gives the
            slot length unless the profile is unit-slot (module docstring).
        objective
            ``"latency"``, ``"ttft"`` or ``"makespan"``.
        weight
            ``w_i`` (integers >= 1); all ones by default.
        slot_s
            Slot length in seconds; overrides the default mapping.
        """
        check_type(instance, "instance", Instance, "an Instance")
        check_type(profile, "profile", DeploymentProfile, "a DeploymentProfile")
        tau = slot_length_s(instance, profile) if slot_s is None else float(slot_s)
        if not np.isfinite(tau) or tau <= 0:
            raise InputError(f"got {tau}; expected a slot length > 0", field="slot_s")
        n = len(instance)
        return cls(
            arrival=instance.arrival_s / tau,
            prompt_tokens=instance.prompt_tokens,
            output_tokens=instance.output_tokens,
            weight=np.ones(n, dtype=np.int64) if weight is None else np.asarray(weight),
            kv_capacity_blocks=profile.kv_capacity_blocks,
            block_tokens=profile.block_tokens,
            max_num_seqs=_finite_limit(profile.max_num_seqs),
            max_num_batched_tokens=_finite_limit(profile.max_num_batched_tokens),
            objective=objective,
            name=instance.name or "instance",
        )

    # -- derived data ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def peak_blocks(self) -> IntArray:
        """KV blocks held in each request's last slot."""
        return -(-(self.prompt_tokens + self.output_tokens - 1) // self.block_tokens)

    def kv_table(self, i: int) -> IntArray:
        """``k_ij`` for ``j = 0..o_i-1``: KV blocks of request ``i`` per offset."""
        tokens = self.prompt_tokens[i] + np.arange(self.output_tokens[i])
        return -(-tokens // self.block_tokens)

    @property
    def objective_offset(self) -> float:
        """Constant added to the solvers' integer objective (module docstring)."""
        w, a = self.weight, self.arrival
        if self.objective == "latency":
            return -float(np.dot(w, a))
        if self.objective == "ttft":
            return float(np.dot(w, 1.0 - a))
        return -float(a.min())

    def integer_objective(self, start: npt.ArrayLike) -> int:
        """The solvers' integer objective of start slots ``start``."""
        start = np.asarray(start, dtype=np.int64)
        if self.objective == "latency":
            return int(np.dot(self.weight, start + self.output_tokens))
        if self.objective == "ttft":
            return int(np.dot(self.weight, start))
        return int((start + self.output_tokens).max())

    def objective_value(self, start: npt.ArrayLike) -> float:
        """The objective of start slots ``start`` (feasibility not checked)."""
        return self.integer_objective(start) + self.objective_offset

    def identical_groups(self) -> list[IntArray]:
        """Groups (size >= 2) of interchangeable requests, in position order.

        Requests equal in release, prompt, output and weight can swap starts: the
        schedule stays feasible with the same objective. So ``S_i <= S_k`` for
        ``i < k`` within a group loses no optimum (symmetry breaking).
        """
        keys = np.stack(
            [self.release, self.prompt_tokens, self.output_tokens, self.weight], axis=1
        )
        _, label, counts = np.unique(
            keys, axis=0, return_inverse=True, return_counts=True
        )
        order = np.argsort(label.ravel(), kind="stable")
        groups = np.split(order, np.cumsum(counts)[:-1])
        return [g for g in groups if len(g) > 1]

    def canonical(self, start: npt.ArrayLike) -> IntArray:
        """``start`` with each identical group's starts sorted by position: same
        objective, feasible whenever ``start`` is, and symmetry-broken."""
        start = np.array(start, dtype=np.int64)
        for group in self.identical_groups():
            start[group] = np.sort(start[group])
        return start

    def subproblem(self, ids: npt.ArrayLike) -> SlotProblem:
        """The same problem restricted to requests ``ids`` (in that order)."""
        ids = np.asarray(ids, dtype=np.int64)
        return replace(
            self,
            arrival=self.arrival[ids],
            prompt_tokens=self.prompt_tokens[ids],
            output_tokens=self.output_tokens[ids],
            weight=self.weight[ids],
        )

    # -- the evaluator's view -------------------------------------------------

    def unit_instance(self) -> Instance:
        """The requests with arrivals in slots, for replay on :meth:`unit_profile`."""
        return Instance(
            arrival_s=self.arrival,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            name=self.name,
        )

    def unit_profile(self) -> DeploymentProfile:
        """The ``unit-slot`` profile with this problem's capacity and limits."""
        base = load_profile("unit-slot")
        return base.replace(
            kv_capacity_tokens=self.kv_capacity_blocks * self.block_tokens,
            block_tokens=self.block_tokens,
            max_num_seqs=self.max_num_seqs or base.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens
            or base.max_num_batched_tokens,
            max_model_len=max(
                base.max_model_len,
                int((self.prompt_tokens + self.output_tokens).max()),
            ),
        )


#: Engine limits at or above this are "no limit" in the slot model (the unit-slot
#: profile sets its batch limits to 10**9 so that memory is the only constraint).
NO_LIMIT = 10**9


def _finite_limit(value: int) -> int | None:
    return None if value >= NO_LIMIT else int(value)


def slot_length_s(instance: Instance, profile: DeploymentProfile) -> float:
    """Seconds per slot: 1 on a unit-slot profile, else the module docstring's rule."""
    try:
        check_unit_slots(profile)
        return 1.0
    except InputError:
        pass
    context = float(instance.prompt_tokens.mean() + instance.output_tokens.mean() / 2)
    phi = batch_features(1, decode_batch=[0], decode_kv_tokens=[max(1, round(context))])
    return float(profile.iteration_time_s(phi)[0])
