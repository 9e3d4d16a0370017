"""The adapters resident on one replica: :class:`ReplicaAdapters`.

Rules (the spec, its sources and its memory are in :mod:`lsched.adapters`):

1. *max_loras.* After a batch's preemptions and admissions, the distinct
   adapters of the replica's running requests number at most ``max_loras``
   (vLLM V0's ``curr_loras``, counted over the running queue; the base model,
   code ``-1``, is no adapter). A batch is a subset of the running requests, so
   it holds at most ``max_loras`` adapters too. The engine refuses a batch
   that breaks this with a :class:`~lsched.policies.base.PolicyError`.
2. *Residency.* At most ``slots`` adapters are resident, in least recently used
   order. Before a batch runs, the adapter of each member, in batch order
   (prefills, then decodes), that is not resident is loaded: into a free slot,
   else into the slot of the least recently used resident adapter that no
   running request uses (it is evicted). Rule 1 and ``slots >= max_loras``
   leave such a slot. Every member's adapter then becomes the most recently
   used, in batch order.
3. *Load time.* Loading adapter ``a`` takes ``size_a / h2d`` seconds. The
   loads of a batch run one after the other before its forward pass, from the
   iteration's start, and lengthen the iteration by their sum (as a blocking
   swap or a host-tier prefix copy does).
4. *Merged batches* (``Batch.merged``, dLoRA): every member uses one adapter
   ``a`` (else :class:`~lsched.policies.base.PolicyError`), and the batch runs
   without the adapter columns. The replica's mode is ``a`` after a merged
   batch and *unmerged* after any other (it starts unmerged); a batch whose
   mode differs from the replica's takes ``merge_switch_s`` more
   (:mod:`lsched.profile.cost`), a *switch*.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from lsched.policies.base import PolicyError


class ReplicaAdapters:
    """Resident adapters and loads of one replica (module docstring).

    Parameters
    ----------
    codes
        Per local request, its adapter's code (``-1``: the base model); a
        read-only view is shown to the policy.
    load_s
        Per adapter code, its load time in seconds.
    slots, max_loras
        The spec's slots and ``max_loras``.
    names
        Per adapter code, its name (for the log).

    Attributes
    ----------
    instance_codes
        On a replica that receives requests while it runs
        (:class:`~lsched.evaluator.cluster.JointEngine`): per instance request,
        its adapter's code, which the engine copies into :attr:`codes` when a
        request is routed or migrated there; ``None`` elsewhere.
    """

    def __init__(
        self,
        codes: np.ndarray,
        load_s: list[float],
        slots: int,
        max_loras: int,
        names: list[str],
    ) -> None:
        self.codes = codes
        self.instance_codes: np.ndarray | None = None
        self.load_s = load_s
        self.names = names
        self.slots = slots
        self.max_loras = max_loras
        self.resident: OrderedDict[int, None] = OrderedDict()  # LRU first
        #: every load: (run, adapter code, start_s, end_s, evicted code or -1),
        #: ``run`` the replica's run it precedes (-1 without a log)
        self.loads: list[tuple[int, int, float, float, int]] = []
        self.loaded_s = 0.0
        self.mode = -1  # the merged adapter's code, -1: unmerged
        self.switches = 0
        #: every merged batch: (run, adapter code), run as in :attr:`loads`
        self.merged: list[tuple[int, int]] = []

    def check_running(self, running: list[int]) -> None:
        """Rule 1 over the running requests (after a batch's admissions)."""
        codes = self.codes
        used = {c for r in running if (c := int(codes[r])) >= 0}
        if len(used) > self.max_loras:
            raise PolicyError(
                f"the running requests use {len(used)} distinct adapters "
                f"{sorted(used)} > max_loras {self.max_loras}"
            )

    def prepare(
        self, members: list[int], running: list[int], now_s: float, run: int
    ) -> float:
        """Rules 2 and 3 for a batch of ``members``, before run ``run``: load
        what is missing; returns the seconds the loads take (0 if none)."""
        codes = self.codes
        wanted = [c for r in members if (c := int(codes[r])) >= 0]
        if not wanted:
            return 0.0
        resident = self.resident
        seconds = 0.0
        in_use: set[int] | None = None
        for c in wanted:
            if c not in resident:
                evicted = -1
                if len(resident) >= self.slots:
                    if in_use is None:
                        in_use = {int(codes[r]) for r in running}
                    evicted = self._evict(in_use)
                resident[c] = None
                start = now_s + seconds
                seconds += self.load_s[c]
                self.loads.append((run, c, start, now_s + seconds, evicted))
            resident.move_to_end(c)
        self.loaded_s += seconds
        return seconds

    def switch(self, merged: bool, members: list[int], run: int) -> bool:
        """Rule 4 for a batch of ``members`` before run ``run``: whether it
        switches the replica's mode."""
        mode = -1
        if merged:
            used = {int(self.codes[r]) for r in members}
            if len(used) != 1 or min(used) < 0:
                raise PolicyError(
                    f"a merged batch uses adapters {sorted(used)} (-1: the base "
                    "model); expected one adapter"
                )
            mode = used.pop()
            self.merged.append((run, mode))
        switched = mode != self.mode
        self.mode = mode
        self.switches += switched
        return switched

    def _evict(self, in_use: set[int]) -> int:
        """Evict the least recently used adapter not in ``in_use``."""
        for c in self.resident:
            if c not in in_use:
                del self.resident[c]
                return c
        raise PolicyError(
            f"no adapter slot free: all {self.slots} resident adapters "
            f"{list(self.resident)} are used by running requests"
        )

    def batch_features(
        self, prefill: list[int], chunks: list[int], decode: np.ndarray
    ) -> tuple[int, int]:
        """The batch's distinct adapters and LoRA tokens (tokens of members with
        an adapter: prefill chunk tokens, one per decode step)."""
        codes = self.codes
        distinct: set[int] = set()
        tokens = 0
        for r, c in zip(prefill, chunks, strict=True):
            a = int(codes[r])
            if a >= 0:
                distinct.add(a)
                tokens += c
        for a in codes[decode].tolist():
            if a >= 0:
                distinct.add(a)
                tokens += 1
        return len(distinct), tokens

    def snapshot(self) -> tuple:
        return (list(self.resident), len(self.loads), self.loaded_s, self.mode,
                self.switches, len(self.merged))  # fmt: skip

    def restore(self, state: tuple) -> None:
        resident, count, self.loaded_s, self.mode, self.switches, merged = state
        self.resident = OrderedDict.fromkeys(resident)
        del self.loads[count:]
        del self.merged[merged:]
