"""``priority``: admission and prefill in ascending order of a per-request key.

The key ``k_i`` is one of (smaller is served first; ties by arrival order):

``work`` (default)
    The request's estimated *remaining processing time* under the affine
    iteration-time model ``t = w_0 + w_P P + w_Q Q + w_D D + w_K K`` (DESIGN.md,
    "The iteration model"): with ``r_i`` prompt tokens still to prefill from a
    context of ``x_i`` tokens (``r_i = s_i + e_i, x_i = 0`` while waiting: a
    recomputed request prefills its emitted tokens again) and ``n_i`` decode
    steps still to run,

        k_i = (w_P + w_0 / B) r_i + w_Q r_i (x_i + r_i)
              + sum over the remaining steps j of (w_D + w_0 / B + w_K kv_j)

    where ``kv_j = s_i + j - 1`` is the KV the step emitting token ``j`` reads,
    ``B`` the token budget (each token's share of a full iteration's constant) and
    ``n_i = max(pred_i - e_i, 1)``, one less while the prefill is unfinished (the
    prefill emits a token). The weights are parameters; :func:`work_params` reads
    them off a profile (the gradient of its iteration time at a full prefill
    batch). The defaults (``w_P = w_D = 1``, the rest 0) count tokens still to
    process. This is Smith's shortest-processing-time rule with the processing
    time of the *batched* server: prompts dominate where they are long, so it is
    shortest-work-first rather than shortest-output-first.
``prompt``
    Prompt tokens still to prefill, ``r_i``.
``output``
    Predicted remaining output, ``max(pred_i - e_i, 1)`` (the key of ``sjf``).
``arrival``
    Arrival time (FCFS order).
``priority``
    The instance's ``priority`` column (``ReplicaView.priority``).
``explicit``
    ``keys[i]``, an array handed in through :class:`PriorityParams` and indexed by
    the replica's local ids (the instance order, for one replica). It is an
    *offline* input: whoever computed it may have used the true output lengths
    (an oracle), as :func:`lsched.formulations.scale.improve` does. For several
    replicas put the keys in the instance's ``priority`` column instead, which
    the evaluator splits per replica.

``work`` and ``output`` read the predicted output lengths (an oracle predictor
gives the true ones); the policy never sees the true ``o_i``.

Per-request adjustments (offline inputs, indexed like ``keys``): ``offsets``
are added to every key of the rule (so ``key="work"`` with offsets stays a
*remaining*-work rule, shifted per request), and ``chunk_caps`` bound the prefill
chunk a request gets in one iteration (as ``chunk_tokens`` does for all).
Capping chunks spreads a prompt over several iterations that also carry other
prompts' chunks: the attention feature ``Q = c (x + c)`` summed over a prompt's
chunks is ``(s^2 + sum c^2) / 2``, from ``s^2`` in one chunk down towards
``s^2 / 2``, at the price of a first token a few iterations later. A *prefill
budget* below the token budget shortens the iterations, and so the decode tails
of the requests past their prefill (each waits one iteration per token), at the
price of the per-iteration constant: worth it at moderate load, not in
overload; ``prefill_budgets`` let an offline search set it per arrival window.

At every iteration boundary
---------------------------
1. **Plan of the running requests.** With ``order="key"`` (default) every
   running request past its prefill gets one decode step (admission order, while
   the token budget lasts), then the running requests still prefilling get
   chunks ``min(remaining, cap, budget left)`` in ascending key (``cap`` the
   request's chunk cap, if any), the prefill tokens of the iteration within the
   *prefill budget* if one is given (``prefill_budget``, and the entry of
   ``prefill_budgets`` of the latest arrival). With
   ``order="admission"`` all running requests are served in admission order, as
   in :mod:`~lsched.policies.sjf`. Running requests the budget does not reach keep
   their KV (a paused prefill costs nothing but its KV).
2. **KV shortage.** While the KV blocks held after that plan exceed the
   capacity, recompute-preempt the running request with the *largest* key (ties:
   the most recently admitted) and plan again without it; a step that preempted
   here admits nothing.
3. **Admission.** Waiting requests are considered in ascending key. With
   ``order="key"`` they compete for the budget with the running requests still
   prefilling (one list in ascending key; ties: running first, then by id), so
   a new request with a smaller key takes the budget before a long prompt
   already under way: chunked prefill in key order is preemptive-resume
   shortest-work-first at no recompute cost. With ``order="admission"`` they get
   what the running requests leave. A waiting request ``w`` is admitted with a
   first chunk ``min(s_w + e_w, cap, budget left)`` when the sequence cap
   (running plus admitted, as in ``sjf``) and the KV blocks allow, the KV counted
   as if every running request got its step-1 work (so the batch fits whatever
   the order gives them: a running request never gets more than its step-1
   work); the first that does not fit stops admission (head-of-line blocking in
   key order; running requests later in the list are still served).

   ``preemptive=true`` only: when ``w`` does not fit because of the KV blocks or
   the sequence cap (budget being left), running requests with a *strictly
   larger* key are recompute-preempted, largest first (ties: most recently
   admitted), until ``w`` fits; if all of them would not make room, none is and
   admission stops (the rule of :mod:`~lsched.policies.sjf`'s ``srpt``). A victim
   already served in this batch (a decode step, or with ``order="admission"`` any
   work) gives its tokens back to the budget.

With ``key="output"`` and ``order="admission"`` this is exactly ``sjf`` (and with
``preemptive=true``, ``srpt``).

Holding (:mod:`~lsched.policies.base`): a decode-only batch that neither admits
nor preempts is held. Until a completion, an arrival or the KV limit the running
set and the budget they use stay the same; waiting and paused requests' keys do
not change; KV held only grows, so nothing waiting fits better; and running
requests' keys never grow (every key above is non-increasing in the work done),
so no new preemption victim appears (offsets and caps are constant, and the
prefill budget changes only at arrivals). The policy keeps no state between
calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.sjf import HOW_TO_PREDICT
from lsched.profile import FEATURES, DeploymentProfile

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Key rules (module docstring).
KEYS: tuple[str, ...] = ("work", "prompt", "output", "arrival", "priority", "explicit")
#: Budget orders (module docstring, step 1).
ORDERS: tuple[str, ...] = ("key", "admission")

_CONST, _P, _Q, _D, _K, _H = range(len(FEATURES))


class KeyArray:
    """An immutable array of keys, compared by value and shown by its size.

    Wraps a read-only float64 copy so that :class:`PriorityParams` stays a frozen,
    comparable dataclass and a policy label does not print thousands of numbers.
    """

    __slots__ = ("values",)

    def __init__(self, values: npt.ArrayLike, *, field: str = "keys") -> None:
        try:
            array = np.array(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"got {values!r}; expected numbers", field=field) from None
        if not np.all(np.isfinite(array)):
            raise InputError("expected finite numbers", field=field)
        array.flags.writeable = False
        object.__setattr__(self, "values", array)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KeyArray is immutable")

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyArray):
            return NotImplemented
        return bool(np.array_equal(self.values, other.values))

    def __hash__(self) -> int:
        return hash(self.values.tobytes())

    def __repr__(self) -> str:
        return f"KeyArray(n={len(self)})"

    __str__ = __repr__


def _check_weight(value: Any, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InputError(f"got {value!r}; expected a finite number >= 0", field=name)


@dataclass(frozen=True)
class PriorityParams:
    """Parameters of :class:`Priority` (module docstring).

    Attributes
    ----------
    key
        One of :data:`KEYS`.
    order
        ``"key"`` or ``"admission"`` (step 1 of the module docstring).
    preemptive
        Recompute-preempt running requests with a larger key to admit a waiting
        one (step 3).
    prefill_s_per_token, attention_s_per_token2, decode_s_per_step, kv_read_s_per_token
        Weights ``w_P + w_0/B``, ``w_Q``, ``w_D + w_0/B`` and ``w_K`` of the
        ``work`` key (seconds per token, per token squared, per step, per KV token
        read); the defaults count tokens. :func:`work_params` sets them from a
        profile.
    chunk_tokens
        Largest prefill chunk of one request per iteration (``None``: the budget).
    keys
        The keys for ``key="explicit"`` (an offline input; module docstring).
    offsets
        Per-request offsets added to the keys (an offline input).
    chunk_caps
        Per-request largest prefill chunk per iteration (an offline input;
        integers >= 1).
    prefill_budget
        Largest number of prefill tokens per iteration (``None``: what the token
        budget leaves after the decode steps); ``order="key"`` only.
    prefill_budgets
        Per-request prefill budget in force while that request is the latest
        arrival (an offline input; integers >= 1; ``order="key"`` only).
    """

    key: str = "work"
    order: str = "key"
    preemptive: bool = False
    chunk_tokens: int | None = None
    prefill_s_per_token: float = 1.0
    attention_s_per_token2: float = 0.0
    decode_s_per_step: float = 1.0
    kv_read_s_per_token: float = 0.0
    keys: KeyArray | None = None
    offsets: KeyArray | None = None
    chunk_caps: KeyArray | None = None
    prefill_budget: int | None = None
    prefill_budgets: KeyArray | None = None

    def __post_init__(self) -> None:
        if self.key not in KEYS:
            raise InputError(
                f"got {self.key!r}; expected one of {', '.join(KEYS)}", field="key"
            )
        if self.order not in ORDERS:
            raise InputError(
                f"got {self.order!r}; expected one of {', '.join(ORDERS)}",
                field="order",
            )
        if not isinstance(self.preemptive, bool):
            raise InputError(
                f"got {self.preemptive!r}; expected true or false", field="preemptive"
            )
        if self.chunk_tokens is not None and (
            isinstance(self.chunk_tokens, bool)
            or not isinstance(self.chunk_tokens, int)
            or self.chunk_tokens < 1
        ):
            raise InputError(
                f"got {self.chunk_tokens!r}; expected an integer >= 1 or none",
                field="chunk_tokens",
            )
        for name in (
            "prefill_s_per_token",
            "attention_s_per_token2",
            "decode_s_per_step",
            "kv_read_s_per_token",
        ):
            _check_weight(getattr(self, name), name)
        if self.prefill_budget is not None and (
            isinstance(self.prefill_budget, bool)
            or not isinstance(self.prefill_budget, int)
            or self.prefill_budget < 1
        ):
            raise InputError(
                f"got {self.prefill_budget!r}; expected an integer >= 1 or none",
                field="prefill_budget",
            )
        for name in ("keys", "offsets", "chunk_caps", "prefill_budgets"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, KeyArray):
                object.__setattr__(self, name, KeyArray(value, field=name))
        for name in ("chunk_caps", "prefill_budgets"):
            caps = getattr(self, name)
            if caps is not None and (
                np.any(caps.values < 1) or np.any(caps.values != np.floor(caps.values))
            ):
                raise InputError("expected integers >= 1", field=name)
        if self.order != "key" and (
            self.prefill_budget is not None or self.prefill_budgets is not None
        ):
            raise InputError(
                "a prefill budget needs order='key'", field="prefill_budget"
            )
        if (self.key == "explicit") != (self.keys is not None):
            raise InputError(
                "key='explicit' and keys go together: give both or neither",
                field="keys",
            )


def work_weights(profile: DeploymentProfile) -> dict[str, float]:
    """Weights of the ``work`` key for ``profile`` (seconds).

    The gradient of the profile's iteration time (overheads folded in) at a full
    prefill batch, one chunk of ``B = max_num_batched_tokens`` tokens from an empty
    context: ``phi = [1, B, B^2, 0, 0, 1]``; the active piece's constant is shared
    over the ``B`` tokens of the batch.
    """
    budget = float(profile.max_num_batched_tokens)
    phi = np.array([1.0, budget, budget * budget, 0.0, 0.0, 1.0])
    time = profile.iteration_time
    regime = int(time.regime_of(phi[None, :])[0])
    pieces = time.effective_regimes[regime]
    w = pieces[int(np.argmax(pieces @ phi))]
    share = (w[_CONST] + w[_H]) / budget
    return {
        "prefill_s_per_token": max(0.0, float(w[_P] + share)),
        "attention_s_per_token2": max(0.0, float(w[_Q])),
        "decode_s_per_step": max(0.0, float(w[_D] + w[_CONST] / budget)),
        "kv_read_s_per_token": max(0.0, float(w[_K])),
    }


def work_params(profile: DeploymentProfile, **changes: Any) -> PriorityParams:
    """:class:`PriorityParams` with ``key="work"`` weighted for ``profile``."""
    return PriorityParams(**(work_weights(profile) | changes))


def work_keys(
    params: PriorityParams,
    prompt_tokens: npt.ArrayLike,
    output_tokens: npt.ArrayLike,
) -> FloatArray:
    """The ``work`` key of fresh requests (nothing emitted), as ``improve`` uses.

    ``output_tokens`` are the (predicted or true) output lengths.
    """
    s = np.asarray(prompt_tokens, dtype=np.float64)
    o = np.asarray(output_tokens, dtype=np.float64)
    zeros = np.zeros_like(s)
    # the prefill emits token 1, the decode steps tokens 2..o
    return _work(params, s, zeros, s, zeros + 2.0, np.maximum(o, 1.0) - 1.0)


def _work(
    params: PriorityParams,
    remaining: FloatArray,
    context: FloatArray,
    prompt: FloatArray,
    first_token: FloatArray,
    steps: FloatArray,
) -> FloatArray:
    """``work`` key: ``remaining`` prefill tokens from ``context``, then ``steps``
    decode steps emitting tokens ``first_token ..`` of a ``prompt``-token request."""
    # KV read by the steps emitting tokens j = first_token .. first_token + steps - 1
    kv = steps * (prompt + first_token - 1.0) + steps * (steps - 1.0) / 2.0
    return (
        params.prefill_s_per_token * remaining
        + params.attention_s_per_token2 * remaining * (context + remaining)
        + params.decode_s_per_step * steps
        + params.kv_read_s_per_token * kv
    )


class Priority:
    """Admission and prefill in ascending order of a per-request key."""

    name = "priority"
    #: The standing decision of :mod:`lsched.policies.base`: with nothing waiting,
    #: no prefill under way and room for one decode step of every running request,
    #: step 1 gives each a step, step 2 sheds none and step 3 admits none, so the
    #: batch is every running request decoding, in admission order, held.
    holds_running_when_idle = True

    def __init__(self, params: PriorityParams | None = None) -> None:
        self.params = params or PriorityParams()
        p = self.params
        #: Per-request offsets and chunk caps in use (from the parameters). An
        #: offline search (:mod:`lsched.formulations.scale`) points these at its
        #: own arrays and changes entries of requests not yet arrived between runs.
        self.offsets: FloatArray | None = (
            None if p.offsets is None else p.offsets.values
        )
        self.chunk_caps: IntArray | None = (
            None if p.chunk_caps is None else p.chunk_caps.values.astype(np.int64)
        )
        self.prefill_budgets: IntArray | None = (
            None
            if p.prefill_budgets is None
            else p.prefill_budgets.values.astype(np.int64)
        )

    def snapshot(self) -> None:
        """No decision state: the keys are read from the view at every call, and
        the per-request settings above are settings, not state (a search changes
        them between replays)."""
        return None

    def restore(self, state: None) -> None:
        """Nothing to restore (:meth:`snapshot`)."""

    # -- keys ---------------------------------------------------------------------

    def keys(self, view: ReplicaView, ids: IntArray) -> FloatArray:
        """The key of each of ``ids`` at this boundary, offsets included.

        Raises
        ------
        InputError
            As :meth:`base_keys`, or if the offsets do not match the replica.
        """
        base = self.base_keys(view, ids)
        if self.offsets is None:
            return base
        return base + self.offsets[ids]

    def base_keys(self, view: ReplicaView, ids: IntArray) -> FloatArray:
        """The key rule's value for each of ``ids`` (module docstring).

        Raises
        ------
        InputError
            If the key needs data the instance does not carry (predictions,
            priorities) or explicit keys do not match the replica's requests.
        """
        p = self.params
        key = p.key
        if key == "arrival":
            return view.arrival_s[ids].astype(np.float64)
        if key == "priority":
            if view.priority is None:
                raise InputError(
                    "key 'priority' needs the instance's priority column",
                    field="priority",
                )
            return view.priority[ids].astype(np.float64)
        if key == "explicit":
            assert p.keys is not None
            if len(p.keys) != len(view.arrival_s):
                raise InputError(
                    f"got {len(p.keys)} explicit keys for a replica of "
                    f"{len(view.arrival_s)} requests; expected one per request "
                    "(for several replicas use key='priority')",
                    field="keys",
                )
            return p.keys.values[ids]
        processed = view.processed_tokens[ids]
        emitted = view.emitted_tokens[ids]
        prompt = view.prompt_tokens[ids]
        running = processed > 0
        # while waiting: the whole prompt plus emitted tokens (recompute)
        target = np.where(running, view.prefill_target_tokens[ids], prompt + emitted)
        remaining = np.maximum(target - processed, 0)
        if key == "prompt":
            return remaining.astype(np.float64)
        pred = view.predicted_output_tokens
        if pred is None:
            raise InputError(
                f"key {key!r} reads predicted output lengths but the instance has "
                f"none; {HOW_TO_PREDICT}",
                field="predicted_output_tokens",
            )
        left = np.maximum(pred[ids] - emitted, 1)
        if key == "output":
            return left.astype(np.float64)
        prefilling = remaining > 0
        steps = (left - prefilling).astype(np.float64)
        return _work(
            p,
            remaining.astype(np.float64),
            processed.astype(np.float64),
            prompt.astype(np.float64),
            (emitted + 1 + prefilling).astype(np.float64),
            steps,
        )

    def prefill_budget(self, view: ReplicaView) -> int | None:
        """Prefill tokens allowed in the next iteration, or ``None``: the smaller
        of ``prefill_budget`` and the latest arrival's ``prefill_budgets`` entry."""
        budget = self.params.prefill_budget
        if self.prefill_budgets is not None and view.num_arrived > 0:
            latest = int(self.prefill_budgets[view.num_arrived - 1])
            budget = latest if budget is None else min(budget, latest)
        return budget

    # -- the decision ---------------------------------------------------------------

    def decide(self, view: ReplicaView) -> Batch:
        m = len(view.arrival_s)
        per_request = (
            ("offsets", self.offsets),
            ("chunk_caps", self.chunk_caps),
            ("prefill_budgets", self.prefill_budgets),
        )
        for name, values in per_request:
            if values is not None and len(values) != m:
                raise InputError(
                    f"got {len(values)} {name} for a replica of {m} requests; "
                    "expected one per request",
                    field=name,
                )
        capacity = view.kv.capacity_blocks
        running = view.running
        key_run = self.keys(view, running)
        remaining = view.prefill_target_tokens[running] - view.processed_tokens[running]
        prefilling = remaining > 0

        # steps 1-2: plan the running requests, shedding the largest keys
        alive = np.ones(len(running), dtype=bool)
        victims: list[int] = []
        while True:
            work, blocks = self._plan(view, running, remaining, prefilling, key_run,
                                      alive)  # fmt: skip
            if int(blocks[alive].sum()) <= capacity:
                break
            # the largest key; ties: the most recently admitted (the last index)
            idx = np.flatnonzero(alive)
            k = int(idx[len(idx) - 1 - int(np.argmax(key_run[idx][::-1]))])
            alive[k] = False
            victims.append(int(running[k]))
        if victims:
            return self._batch(view, running, work, alive, [], [], victims)
        return self._admit(view, running, remaining, prefilling, key_run, work, blocks)

    def _plan(
        self,
        view: ReplicaView,
        running: IntArray,
        remaining: IntArray,
        prefilling: npt.NDArray[np.bool_],
        key_run: FloatArray,
        alive: npt.NDArray[np.bool_],
    ) -> tuple[IntArray, IntArray]:
        """Step 1 for the ``alive`` running requests: work and KV blocks after it."""
        cap = self.params.chunk_tokens
        chunk = remaining if cap is None else np.minimum(remaining, cap)
        if self.chunk_caps is not None:
            chunk = np.minimum(chunk, self.chunk_caps[running])
        need = np.where(prefilling, chunk, 1)
        need = np.where(alive, need, 0)
        if self.params.order == "admission":
            serve = np.arange(len(running))
        else:
            decoding = np.flatnonzero(~prefilling)
            filling = np.flatnonzero(prefilling)
            filling = filling[np.lexsort((running[filling], key_run[filling]))]
            serve = np.concatenate([decoding, filling])
        # each in turn takes min(need, budget left): cumulative work is
        # min(cumulative need, budget); the decode steps come first, so a prefill
        # budget caps the cumulative work at the steps plus that budget
        limit = view.limits.max_num_batched_tokens
        prefill_budget = self.prefill_budget(view)
        if prefill_budget is not None:
            limit = min(limit, int((alive & ~prefilling).sum()) + prefill_budget)
        taken = np.minimum(np.cumsum(need[serve]), limit)
        got = taken.copy()
        got[1:] -= taken[:-1]
        work = np.zeros(len(running), dtype=np.int64)
        work[serve] = got
        after = view.processed_tokens[running] + work
        blocks = np.where(alive, view.kv.blocks(after), 0)
        return work, blocks

    def _admit(
        self,
        view: ReplicaView,
        running: IntArray,
        remaining: IntArray,
        prefilling: npt.NDArray[np.bool_],
        key_run: FloatArray,
        plan_work: IntArray,
        plan_blocks: IntArray,
    ) -> Batch:
        """Step 3: the waiting requests (and, with ``order="key"``, the running
        ones still prefilling) served in ascending key."""
        limits = view.limits
        params = self.params
        n_run = len(running)
        alive = np.ones(n_run, dtype=bool)
        waiting = view.waiting
        if len(waiting) == 0:
            return self._batch(view, running, plan_work, alive, [], [], [])
        key_wait = self.keys(view, waiting)
        # served first, whatever the waiting requests' keys: every running request
        # (order="admission") or those decoding (order="key")
        first = np.ones(n_run, dtype=bool) if params.order == "admission" else (
            ~prefilling
        )  # fmt: skip
        work = np.where(first, plan_work, 0)
        # token budget left, and prefill tokens allowed (order="key": `first` are
        # decode steps, none of them prefill)
        budget = limits.max_num_batched_tokens - int(work.sum())
        prefill_budget = self.prefill_budget(view)
        prefill_left = (
            limits.max_num_batched_tokens  # never below `budget`: does not bind
            if prefill_budget is None
            else prefill_budget
        )
        entries = self._queue(running, waiting, key_run, key_wait, first)

        seqs = n_run
        used = int(plan_blocks.sum())  # as if every running request got its plan
        kv = view.kv
        capacity = kv.capacity_blocks
        admitted: list[int] = []
        chunks: list[int] = []
        victims: list[int] = []
        stopped = False
        for entry in entries:
            if entry >= 0:  # a running request still prefilling
                if alive[entry] and min(budget, prefill_left) > 0:
                    # never more than its plan, which the KV count assumed (only
                    # a preemption's returned budget could give it more)
                    c = min(int(remaining[entry]), budget, prefill_left,
                            int(plan_work[entry]))  # fmt: skip
                    work[entry] = c
                    budget, prefill_left = budget - c, prefill_left - c
                continue
            if stopped or min(budget, prefill_left) == 0:
                stopped = True
                continue
            w = int(waiting[-1 - entry])
            # victims give back no prefill budget
            full = min(self._full_chunk(view, w), prefill_left)

            def fits(seqs: int, used: int, budget: int, full: int = full) -> bool:
                c = min(full, budget)
                return seqs < limits.max_num_seqs and used + kv.blocks(c) <= capacity

            if not fits(seqs, used, budget):
                room = None
                if params.preemptive:
                    room = self._make_room(key_run, float(key_wait[-1 - entry]),
                                           alive, plan_blocks, work,
                                           (seqs, used, budget), fits)  # fmt: skip
                if room is None:
                    stopped = True
                    continue
                chosen, (seqs, used, budget) = room
                for k in chosen:
                    alive[k] = False
                    work[k] = 0
                    victims.append(int(running[k]))
            c = min(full, budget)
            admitted.append(w)
            chunks.append(c)
            seqs, used, budget = seqs + 1, used + kv.blocks(c), budget - c
            prefill_left -= c
        return self._batch(view, running, work, alive, admitted, chunks, victims)

    @staticmethod
    def _queue(
        running: IntArray,
        waiting: IntArray,
        key_run: FloatArray,
        key_wait: FloatArray,
        first: npt.NDArray[np.bool_],
    ) -> list[int]:
        """The running requests not served ``first`` and the waiting ones, in one
        list in ascending key (key, waiting?, id): entries >= 0 are indices into
        ``running``, entries < 0 are -1 - index into ``waiting``."""
        later = np.flatnonzero(~first)
        entries = np.concatenate([later, -1 - np.arange(len(waiting))])
        sort_key = np.concatenate([key_run[later], key_wait])
        is_wait = np.concatenate([np.zeros(len(later)), np.ones(len(waiting))])
        ids = np.concatenate([running[later], waiting])
        return entries[np.lexsort((ids, is_wait, sort_key))].tolist()

    def _full_chunk(self, view: ReplicaView, w: int) -> int:
        """The prefill chunk waiting request ``w`` asks for: its prompt and the
        tokens it emitted, within ``chunk_tokens`` and its chunk cap."""
        full = int(view.prompt_tokens[w] + view.emitted_tokens[w])
        if self.params.chunk_tokens is not None:
            full = min(full, self.params.chunk_tokens)
        if self.chunk_caps is not None:
            full = min(full, int(self.chunk_caps[w]))
        return full

    @staticmethod
    def _make_room(
        key_run: FloatArray,
        key: float,
        alive: npt.NDArray[np.bool_],
        plan_blocks: IntArray,
        work: IntArray,
        state: tuple[int, int, int],
        fits: Callable[[int, int, int], bool],
    ) -> tuple[list[int], tuple[int, int, int]] | None:
        """The running requests to preempt so that a waiting request of ``key``
        fits: those alive with strictly larger keys, largest first (ties: most
        recently admitted), until it ``fits``. Returns them with the batch's
        (sequences, KV blocks, token budget) without them (``state``: with
        them), or ``None`` if it does not fit even without all of them."""
        order = [
            k
            for k in sorted(
                reversed(range(len(key_run))), key=lambda k: -float(key_run[k])
            )
            if alive[k] and key_run[k] > key
        ]
        chosen: list[int] = []
        t_seqs, t_used, t_budget = state
        for k in order:
            chosen.append(k)
            t_seqs -= 1
            t_used -= int(plan_blocks[k])
            t_budget += int(work[k])  # served already: its work comes back
            if fits(t_seqs, t_used, t_budget):
                return chosen, (t_seqs, t_used, t_budget)
        return None

    @staticmethod
    def _batch(
        view: ReplicaView,
        running: IntArray,
        work: IntArray,
        alive: npt.NDArray[np.bool_],
        admitted: list[int],
        chunks: list[int],
        victims: list[int],
    ) -> Batch:
        """Assemble the batch; hold a decode-only batch that admits and preempts
        nothing (module docstring)."""
        scheduled = alive & (work > 0)
        if scheduled.all():  # the view's own array: the engine checks it faster
            ids, amount = running, work
        else:
            ids, amount = running[scheduled], work[scheduled]
        filling = view.prefill_target_tokens[ids] > view.processed_tokens[ids]
        if not filling.any() and not admitted and not victims:
            return Batch(decode=ids, hold=True)
        return Batch(
            prefill=np.concatenate([ids[filling], np.array(admitted, np.int64)]),
            prefill_tokens=np.concatenate(
                [amount[filling], np.array(chunks, np.int64)]
            ),
            decode=ids[~filling],
            preempt=np.array(victims, dtype=np.int64),
        )
