"""The policy interface: what an online scheduler sees and what it returns.

A policy is called at iteration boundaries of one replica. It sees a
:class:`ReplicaView` (arrived requests, their prompts, tokens emitted and processed,
*predicted* output lengths; never the true output length) and returns the next
:class:`Batch`: prefill chunks, decode steps and recompute preemptions. It is
built once per replica and run with a :class:`PolicyContext` (its replica, pool
and limits, the workload's tenants); the engine may snapshot and restore its
state (:func:`snapshot_policy`).

Request lifecycle, per replica (DESIGN.md, "The iteration model")
------------------------------------------------------------------
A request is *waiting* (arrived, holds no KV), *running* (admitted: holds the KV
of its ``processed_tokens``) or *done*.

- Admission: a waiting request becomes running when the policy gives it a first
  prefill chunk. Its ``prefill_target_tokens`` is then ``s_i + e_i`` (prompt plus
  the ``e_i`` tokens already emitted, all of which a recomputed request must
  process again).
- Prefill chunk of ``c`` tokens: ``1 <= c <= prefill_target - processed``; the
  chunk that reaches the target emits the next output token (token 1 the first
  time, token ``e_i + 1`` after a preemption).
- Decode step (only once ``processed >= prefill_target``): processes one token and
  emits one; the step that emits token ``j`` leaves ``s_i + j - 1`` tokens of KV.
- The request completes at the end of the iteration that emits token ``o_i``; its
  KV is freed then.
- Recompute preemption (``Batch.preempt``, applied before the iteration): the
  running request frees all its KV (those ``processed_tokens`` are *recomputed
  tokens*) and waits again.
- Swap preemption (``Batch.swap_out``, after the preemptions): the running request
  moves its KV to the replica's host tier (:mod:`lsched.tiers`) and is *swapped*
  (``view.swapped``; its tokens in ``view.swapped_tokens``, ``processed_tokens``
  0). ``Batch.swap_in`` (a swapped request, after the swap-outs) moves it back:
  it runs again with its tokens, emitted tokens and prefill target unchanged, no
  token recomputed. How the copies meet the iterations is the policy's
  ``swap_mode`` (:func:`swap_mode`): ``blocking`` (the default; the iteration is
  longer by the copies, and a request swapped in may run in it) or ``async``
  (copies overlap; a request swapping out leaves at once but its GPU blocks stay
  taken until its copy ends, one swapping in takes its blocks at once and runs
  from the first boundary after its copy; neither is in any list meanwhile).
  Host blocks held (``view.host_used_blocks``) stay within
  ``view.host_capacity_blocks``.

Per iteration: KV blocks held by all running requests *after* the iteration
(``ceil(processed / block_tokens)`` each, ``view.kv.blocks``: the block arithmetic
is :class:`lsched.kv.KVBlocks`'s alone) <= ``kv_capacity_blocks``; requests in the
batch <= ``max_num_seqs``; prefill tokens + decode steps <=
``max_num_batched_tokens``. A batch that breaks a rule is a policy bug and the
engine raises :class:`PolicyError`.

Holding a decision
------------------
Evaluating one iteration at a time is what makes simulators slow. A policy may set
``Batch.hold = True`` on a decode-only batch (no prefill, no preemption): a promise
that, were it called at the following boundaries, it would return the same batch
until the next *event*: a completion, an arrival (the first boundary at or after
it), the KV limit (the next repetition would not fit), its ``wake_at_s`` or its
``hold_context_tokens`` (the next repetition would leave the batch more context
tokens than that: a cap on a batch's context, as DistServe's). The engine may then
advance the whole stretch in closed form. The naive reference engine ignores
``hold`` and calls the policy every iteration, so a false promise shows up as a
difference in the tests. A policy's own state must not depend on whether it was
called during a held stretch.

A standing decision
-------------------
A policy may also declare, with a true attribute ``holds_running_when_idle``, what
it decides at a boundary where

- no request is waiting,
- every running request is past its prefill (``processed >= prefill_target``), and
- one decode step of every running request fits: running requests <=
  ``max_num_seqs`` and <= ``max_num_batched_tokens``, and the KV blocks after the
  step (``ceil((processed + 1) / block_tokens)`` summed over them) <=
  ``kv_capacity_blocks``:

it returns ``Batch(decode=view.running, hold=True)``, every running request in
admission order, held, no wake-up time; and whether it is called there or not does
not change its state. The engine (:mod:`lsched.evaluator.engine`) then takes that
decision itself, without building a view or calling the policy; such a boundary
follows every completion and every first token on a replica that is not
overloaded. The declaration says nothing the policy could not see in a
:class:`ReplicaView`, and the naive reference engine ignores it (it calls the
policy every iteration), so a false declaration shows up in the tests like a false
hold. Read it with :func:`holds_running_when_idle`; a subclass that changes the
rule must not inherit it.

A batch that decodes every running request is cheapest to check when its
``decode`` is ``view.running`` itself (the same array object, which is read-only):
with no running request prefilling the engine then knows those steps are valid and
checks only the rest of the batch.

Running totals
--------------
A policy whose decision should not cost work in proportion to the running set
reads the KV its running requests hold as ``view.kv_tokens_held`` and
``view.kv_blocks_held`` instead of summing the per-request arrays. The engine
answers from its ledger (``view.kv_held``, a :class:`lsched.kv.KVHeld`); a view
built without one (by hand, or by the naive reference engine) sums the arrays.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lsched.kv import KVBlocks, KVHeld

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False


#: A request arriving at most this long after an iteration boundary counts as
#: arrived at it. Boundaries computed in closed form and by adding iteration times
#: one by one differ in the last bits; without a tolerance an arrival that falls on
#: a boundary in exact arithmetic would be seen an iteration apart by two engines.
ARRIVAL_TOLERANCE_S = 1e-9


class PolicyError(RuntimeError):
    """A policy returned a batch that breaks the iteration model's rules."""


@dataclass(frozen=True, slots=True)
class ReplicaLimits:
    """The limits a replica enforces on every iteration.

    ``kv`` is the replica's block arithmetic (:class:`lsched.kv.KVBlocks`), the one
    place that turns tokens into blocks; ``kv_capacity_blocks`` and ``block_tokens``
    are the data it is built from. A policy reads it as ``view.kv``.
    ``max_loras``: on a replica that serves LoRA adapters, the most distinct
    adapters its running requests may use (:mod:`lsched.adapters`); ``None``
    elsewhere.
    """

    kv_capacity_blocks: int
    block_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None = None
    max_loras: int | None = None
    kv: KVBlocks = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kv = KVBlocks(int(self.kv_capacity_blocks), int(self.block_tokens))
        object.__setattr__(self, "kv", kv)

    @classmethod
    def from_profile(cls, profile: Any) -> ReplicaLimits:
        """The limits a replica of a deployment profile enforces."""
        return cls(
            kv_capacity_blocks=profile.kv_capacity_blocks,
            block_tokens=profile.block_tokens,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            max_model_len=profile.max_model_len,
        )

    @property
    def kv_blocks(self) -> Any:
        """Gone: ``view.kv.blocks(tokens)`` (:class:`lsched.kv.KVBlocks`)."""
        raise AttributeError(
            "ReplicaLimits.kv_blocks(tokens) is now view.kv.blocks(tokens) "
            "(lsched.kv.KVBlocks owns the block arithmetic)"
        )


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a policy knows of its replica when it is built (``PolicySpec.make``).

    Attributes
    ----------
    replica
        The replica's id in the cluster (``0..C-1`` over all pools).
    pool
        The name of the replica's pool.
    limits
        The replica's KV and batch limits.
    tenants
        Every tenant name of the workload, sorted (``None``: no tenant column);
        a fair-sharing policy knows its tenants before their requests come.
    """

    replica: int
    pool: str
    limits: ReplicaLimits
    tenants: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What a policy may see of one replica at an iteration boundary.

    Requests are numbered locally, ``0..m-1`` in arrival order, on this replica.
    Every array is read-only and indexed by local id; entries of requests that have
    not arrived yet (``id >= num_arrived``) are meaningless to the policy.

    Attributes
    ----------
    now_s
        Time of this boundary, seconds.
    iteration
        Iterations this replica has run so far.
    num_arrived
        Requests with ``arrival_s <= now_s + ARRIVAL_TOLERANCE_S``; they are ids
        ``0..num_arrived-1``.
    running
        Ids holding KV, in admission order (oldest first).
    waiting
        Arrived ids that are neither running nor done, in arrival order.
    arrival_s, prompt_tokens
        Per request.
    predicted_output_tokens
        Predicted output lengths, or ``None`` if the instance has none.
    emitted_tokens
        Output tokens emitted so far.
    processed_tokens
        Tokens whose KV the request holds (0 unless running).
    prefill_target_tokens
        Tokens to process before the next token is emitted: ``s_i + e_i`` at the
        last admission (meaningful while running).
    limits
        The replica's KV and batch limits.
    priority
        The instance's priorities (smaller is more urgent), or ``None``.
    tenant
        The instance's tenant names, or ``None``.
    kv_held
        The engine's running totals of the KV held (:class:`lsched.kv.KVHeld`,
        valid during this decision only), or ``None``: read them as
        :attr:`kv_tokens_held` and :attr:`kv_blocks_held`, which sum the arrays
        without it.
    swapped
        Ids whose KV is in the host tier, in swap-out order.
    swapped_tokens
        Per request, the KV tokens it holds in the host tier (meaningful for
        ``swapped``), or ``None`` (no request ever swapped).
    host_capacity_blocks, host_used_blocks
        Host blocks of the replica's host tier, and those held (by swapped
        requests and copies in flight).
    cached_prefix, prefix_block_tokens
        The replica's prefix cache (:mod:`lsched.evaluator.prefix`), read-only:
        a request's leading run of resident hash blocks (on the GPU or, with a
        host tier, on the host), and the tokens of a hash block ``B``; ``None``
        and 0 without a cache. Read it with
        :meth:`cached_prefix_blocks`.
    adapter
        On a replica that serves adapters, per request its adapter's code
        (``-1``: the base model), else ``None``; admit through
        :class:`LoraGate`.
    """

    now_s: float
    iteration: int
    num_arrived: int
    running: IntArray
    waiting: IntArray
    arrival_s: FloatArray
    prompt_tokens: IntArray
    predicted_output_tokens: IntArray | None
    emitted_tokens: IntArray
    processed_tokens: IntArray
    prefill_target_tokens: IntArray
    limits: ReplicaLimits
    priority: IntArray | None = None
    tenant: npt.NDArray[np.str_] | None = None
    kv_held: KVHeld | None = None
    swapped: IntArray = field(default_factory=lambda: _EMPTY)
    swapped_tokens: IntArray | None = None
    host_capacity_blocks: int = 0
    host_used_blocks: int = 0
    cached_prefix: Callable[[int], int] | None = None
    prefix_block_tokens: int = 0
    adapter: IntArray | None = None

    def cached_prefix_blocks(self, r: int) -> int:
        """Request ``r``'s leading hash blocks resident in the replica's prefix
        cache now (0 without a cache): what its admission would find, before
        the caps of :mod:`lsched.evaluator.prefix` (rule 1). Changes nothing;
        O(blocks of ``r``)."""
        return 0 if self.cached_prefix is None else int(self.cached_prefix(r))

    @property
    def kv(self) -> KVBlocks:
        """The replica's block arithmetic (``limits.kv``)."""
        return self.limits.kv

    @property
    def kv_tokens_held(self) -> int:
        """KV tokens the running requests hold: ``processed_tokens`` summed over
        ``running`` (the engine's running total where it gives one)."""
        if self.kv_held is not None:
            return self.kv_held.tokens
        return int(self.processed_tokens[self.running].sum())

    @property
    def kv_blocks_held(self) -> int:
        """KV blocks the running requests hold, exact: ``kv.blocks`` of their
        ``processed_tokens``, summed (the engine's ledger where it gives one)."""
        if self.kv_held is not None:
            return self.kv_held.blocks
        return int(self.kv.blocks(self.processed_tokens[self.running]).sum())


@dataclass(frozen=True, slots=True)
class Batch:
    """A policy's decision for the next iteration (local request ids).

    Attributes
    ----------
    prefill, prefill_tokens
        Requests given a prefill chunk, and the chunk sizes. A waiting request in
        ``prefill`` is admitted.
    decode
        Running requests, prefill complete, that decode one token.
    preempt
        Running requests preempted (recompute) *before* the iteration.
    swap_out, swap_in
        Running requests whose KV moves to the host tier, and swapped requests
        whose KV comes back, before the iteration (after ``preempt``).
    hold
        See the module docstring; only meaningful for a decode-only batch.
    hold_context_tokens
        With ``hold``: the held stretch ends before the iteration after which
        ``processed_tokens`` summed over ``decode`` would exceed this (``None``: no
        such event). Iteration ``k`` of the stretch (from 0) leaves ``sum(p) +
        (k + 1) * len(decode)`` (``p``: processed now); the first iteration runs
        regardless.
    wake_at_s
        Ask to be called again at the first boundary at or after this time, even
        if no event happens (for policies that wait on a clock). With an empty
        batch, the replica idles until this time or the next arrival.
    merged
        On a replica that serves adapters: every member uses one adapter, run
        merged into the base weights (dLoRA), at the base model's cost; a change
        between merged and unmerged execution, or of the merged adapter, costs
        the profile's ``merge_switch_s`` (:mod:`lsched.evaluator.adapters`).
    """

    prefill: IntArray = field(default_factory=lambda: _EMPTY)
    prefill_tokens: IntArray = field(default_factory=lambda: _EMPTY)
    decode: IntArray = field(default_factory=lambda: _EMPTY)
    preempt: IntArray = field(default_factory=lambda: _EMPTY)
    hold: bool = False
    wake_at_s: float | None = None
    hold_context_tokens: int | None = None
    swap_out: IntArray = field(default_factory=lambda: _EMPTY)
    swap_in: IntArray = field(default_factory=lambda: _EMPTY)
    merged: bool = False

    @property
    def is_empty(self) -> bool:
        return len(self.prefill) == 0 and len(self.decode) == 0

    @property
    def moves_kv(self) -> bool:
        """Whether the batch preempts or swaps (it then cannot be held)."""
        return len(self.preempt) + len(self.swap_out) + len(self.swap_in) > 0


class LoraGate:
    """vLLM V0's ``max_loras`` rule at admission (``vllm/core/scheduler.py``,
    ``_schedule_prefills``: a waiting request whose adapter is not among the
    running batch's adapters ``curr_loras``, which already number
    ``max_loras``, is skipped and stays waiting; later requests may still be
    admitted). Build it with :meth:`of` (``None`` on a replica without
    adapters), ask :meth:`allows` before an admission and call :meth:`add`
    after it.
    """

    def __init__(self, codes: IntArray, running: IntArray, max_loras: int) -> None:
        self.codes = codes
        self.max_loras = max_loras
        self.used = {c for c in codes[running].tolist() if c >= 0}

    @classmethod
    def of(cls, view: ReplicaView) -> LoraGate | None:
        """The gate of ``view``'s running requests, or ``None`` without adapters."""
        if view.adapter is None or view.limits.max_loras is None:
            return None
        return cls(view.adapter, view.running, view.limits.max_loras)

    def allows(self, r: int) -> bool:
        """Whether admitting request ``r`` keeps the adapters within ``max_loras``."""
        c = int(self.codes[r])
        return c < 0 or c in self.used or len(self.used) < self.max_loras

    def add(self, r: int) -> None:
        """Request ``r`` was admitted."""
        c = int(self.codes[r])
        if c >= 0:
            self.used.add(c)


def gated(view: ReplicaView, gate: LoraGate | None, room: int) -> list[int]:
    """The waiting requests an admission loop walks: the first ``room`` without
    adapters (only they can be reached), all of them with a gate (skipped ones
    make room for later ones)."""
    return view.waiting[:room].tolist() if gate is None else view.waiting.tolist()


def decode_all(
    view: ReplicaView,
    running: IntArray,
    processed: IntArray,
    budget: int,
    admit: Callable[[int, int, int], tuple[list[int], list[int]]],
) -> Batch | None:
    """The usual iteration of the FCFS family (FCFS, vLLM, Sarathi-Serve): every
    running request decodes one token and ``admit(running, used_blocks,
    tokens_left)`` fills the rest of the token ``budget`` with new prefills.

    ``running`` are past their prefills; ``processed`` their tokens. ``None``
    when their decodes alone would overflow the KV (the blocks held after the
    step, ``ceil((p + 1) / b)``, exceed the capacity): the caller preempts.
    """
    kv = view.kv
    used = int(kv.blocks_after_step(processed).sum())
    if used > kv.capacity_blocks:
        return None
    new, chunks = admit(len(running), used, budget - len(running))
    if not new:
        return Batch(decode=running, hold=True)
    return Batch(
        prefill=np.array(new, dtype=np.int64),
        prefill_tokens=np.array(chunks, dtype=np.int64),
        decode=running,
    )


def running_state(
    view: ReplicaView,
) -> tuple[list[int], dict[int, int], dict[int, int], dict[int, int]]:
    """The running requests as plain ints, for policies that plan one at a time.

    Returns
    -------
    running, processed, need, held
        Ids in admission order; per id the tokens processed, the prefill tokens
        still to go (``<= 0`` once decoding) and the KV blocks held.
    """
    ids = view.running
    running = ids.tolist()
    tokens = view.processed_tokens[ids]
    processed = dict(zip(running, tokens.tolist(), strict=True))
    left = (view.prefill_target_tokens[ids] - tokens).tolist()
    need = dict(zip(running, left, strict=True))
    held = dict(zip(running, view.kv.blocks(tokens).tolist(), strict=True))
    return running, processed, need, held


def snapshot_policy(policy: object) -> Any:
    """A policy's (or a router's) decision state, for :func:`restore_policy`.

    An object that defines ``snapshot()`` and ``restore(state)`` owns its state;
    for any other the state is a deep copy of its attributes, read-only arrays
    (the views the engine shows) kept by reference.
    """
    own = getattr(policy, "snapshot", None)
    if callable(own):
        return own()
    return copy.deepcopy(vars(policy), _shared_arrays(vars(policy)))


def restore_policy(policy: object, state: Any) -> None:
    """Put a policy back in a :func:`snapshot_policy` (which stays reusable)."""
    own = getattr(policy, "restore", None)
    if callable(own):
        own(state)
        return
    attributes = vars(policy)
    attributes.clear()
    attributes.update(copy.deepcopy(state, _shared_arrays(state)))


def _shared_arrays(attributes: dict[str, Any]) -> dict[int, Any]:
    """A deepcopy memo that keeps the read-only arrays among ``attributes``."""
    return {
        id(value): value
        for value in attributes.values()
        if isinstance(value, np.ndarray) and not value.flags.writeable
    }


def swap_mode(policy: object) -> str:
    """How ``policy``'s swaps meet the iterations (:data:`lsched.tiers.SWAP_MODES`):
    its ``swap_mode`` attribute, ``"blocking"`` without one."""
    return getattr(policy, "swap_mode", "blocking")


def holds_running_when_idle(policy: object) -> bool:
    """Whether ``policy`` declares the standing decision of the module docstring."""
    return getattr(policy, "holds_running_when_idle", False) is True


class Policy(Protocol):
    """An online scheduler for one replica (one object per replica and run)."""

    def decide(self, view: ReplicaView) -> Batch:
        """Return the next batch; called at iteration boundaries."""
        ...
