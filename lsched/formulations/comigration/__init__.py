"""dLoRA's co-migration of requests and LoRA adapters between replicas, as an ILP.

B. Wu, R. Zhu, Z. Zhang, P. Sun, X. Liu, X. Jin, "dLoRA: Dynamically
Orchestrating Requests and Adapters for LoRA LLM Serving", OSDI 2024. The model
below is the one the artifact solves (LLMServe/dLoRA-artifact, commit 75f1c43:
``vllm/engine/migration_ilp.py``, called from ``vllm/engine/engine_manager.py``);
line numbers are of that commit.

When it runs (the caller's part)
--------------------------------
Every ``migration_interval = 10`` s (``engine_manager.py`` lines 57, 145), dLoRA
looks at its engines (replicas): if the engine holding the most KV blocks is at
``>= 0.9`` of its capacity and the one holding the fewest below it, it solves
the ILP over those two (line 347); else, if the engine with the most requests
exceeds the mean by ``>= migration_req_thres = 16`` (lines 58, 362), over it and
the engine with the fewest requests (lines 365-376); otherwise not at all. The
ILP sees only the chosen engines, their requests and their adapters; so does
this problem, whose replicas are whichever the caller passes.

Data
----
Requests ``i = 0..n-1``, replicas ``j = 0..C-1``, adapters ``k = 0..K-1``
(dLoRA's ``i``, ``j`` "groups", ``k`` "models": ``migration_ilp.py`` lines
12-14). Per request (dLoRA's ``RequestMetadata``): its replica now ``r_i``
(``engine_id``), adapter ``k(i)`` (``model_id``), KV blocks ``b_i``
(``num_blocks``) and expected execution time ``e_i``. dLoRA prices every request
of adapter ``k`` at its adapter's mean execution time over finished requests
(``llm_engine.py`` lines 610-611; ``engine_manager.py`` line 140, 5 s before
any, line 56); ``e_i`` per request generalises it. Per replica: KV capacity
``G_j`` blocks (``engine_gpu_blocks``), adapter slots ``L_j``
(``engine_lora_capacity``: dLoRA passes the number of adapters the engine holds
now, line 404), resident adapters ``R_kj`` (``model_engine_mapping``). A
request may be *immovable* (``movable``, all by default): one a live migration
cannot take now (prefilling, waiting, or already on its way) is priced where
it is and stays there. Constants:
``m = 0.05`` s per moved request (``migration_ilp.py`` line 57), ``beta =
block bytes / PCIe`` seconds per overflow block with PCIe ``32 GiB/s``
(``engine_manager.py`` lines 21, 416: dLoRA's ``B = PCIE_BANDWIDTH /
cache_block_size`` blocks per second, line 56 of the ILP divides by it), and
``l_k`` seconds to load adapter ``k`` where it is not resident (size / PCIe).

The model
---------
Binaries ``x_ij`` (request ``i`` on replica ``j``) and ``y_kj`` (adapter ``k``
placed on ``j``), overflow ``o_j >= 0`` (blocks), ``T`` (seconds)::

    min T
    s.t. sum_j x_ij = 1                          every request on one replica
         x_ir_i = 1          for i not movable    an immovable request stays
         x_ij <= y_k(i)j                          only where its adapter is placed
         sum_k y_kj <= L_j                        adapter slots
         o_j >= sum_i b_i x_ij - G_j,  o_j >= 0   KV blocks over capacity
         T >= T_j = sum_i e_i x_ij                adapter execution time
                    + m sum_{i: r_i != j} x_ij    moved requests, at the destination
                    + beta o_j                    overflow blocks over PCIe
                    + sum_{k: not R_kj} l_k y_kj  adapter loads (generalisation)

The artifact's rows are lines 33-34 (assignment), 37-40 (placement), 43-44
(slots) and 55-57 (overflow and epigraph, with ``beta o_j`` as its ``max_mem[j]
>= (sum_i b_i x_ij - G_j) / B``); its warm start is no move (lines 46-52).

Where lsched departs
--------------------
* ``x`` is binary with ``sum_j x_ij = 1``. The artifact declares ``x >= 0``
  continuous with ``sum_j x_ij >= 1`` (lines 23, 34) and rounds each request to
  its largest ``x_ij`` (lines 74-88): it solves a relaxation in ``x`` and does
  not price the rounded plan. The issue asks for the ILP; its optimum is
  the best plan, priced exactly.
* Placement is disaggregated, ``x_ij <= y_k(i)j``, where the artifact has ``n_k
  y_kj >= sum_{i of k} x_ij`` (``n_k`` the requests of ``k``): the same integer
  points, a tighter LP.
* ``e_i`` per request (the artifact's per adapter, see above; its call also
  indexes the adapter times by the ILP's local adapter ids, line 405, which
  this model leaves to the caller).
* Adapter loads ``l_k y_kj`` are new: the artifact's ILP does not price them
  (it fills free adapter slots after it, line 441); ``l = 0`` (the default) is the
  artifact's model.
* Immovable requests are new: the artifact moves any request the ILP moves
  (its requests are those its engines report, ``get_migration_info``); a
  live migration (:mod:`lsched.evaluator.migration`) takes only decoding
  requests, so the others stay and are priced where they are.
* ``y`` exists only for adapters some request uses: the others are needed
  nowhere. The artifact's ``alpha = 0.1`` and CPU blocks are passed but unused.

Exact objective of an assignment
--------------------------------
Given ``x``, the least placement ``y_kj = 1`` iff some request of ``k`` is on
``j`` is optimal: it meets the placement rows, uses the fewest slots, and every
other feasible ``y`` only adds load terms. The least overflow is ``o_j = max(0,
sum_{i on j} b_i - G_j)``. So the model's value of an assignment is ``max_j T_j``
with these, and it is feasible iff no replica needs more than ``L_j`` adapters
and every immovable request is where it is
(:meth:`CoMigrationProblem.replica_times_s`, :mod:`.model`). Staying put is
feasible (the problem refuses data where it is not) and is the warm start.

Free bound
----------
``T* >= max(max_i e_i, (sum_i e_i + beta (sum_i b_i - sum_j G_j)^+) / C)``: the
replica of request ``i`` has ``T_j >= e_i``; summing ``T_j`` over the replicas
counts every ``e_i`` once and at least ``beta sum_j o_j >= beta (sum_i b_i -
sum_j G_j)^+`` (a sum of positive parts is at least the positive part of the
sum), the other terms being ``>= 0``, and the largest ``T_j`` is at least the
mean.

Hand-derived case
-----------------
Two replicas of 8 blocks; replica 0 has slots for 2 adapters (0, 1 resident),
replica 1 for 1 (adapter 1 resident). Requests 0, 1 (adapter 0, 1 s, 4 blocks)
and 2 (adapter 1, 1 s, 4 blocks) on replica 0, request 3 (adapter 1, 0.5 s, 1
block) on replica 1; ``beta = 0.1`` s per block. No move: ``T_0 = 3 + 0.1 (12
- 8) = 3.4``, ``T_1 = 0.5``. Moving request 0 or 1 to replica 1 would need
adapter 0 there beside adapter 1 (one slot): infeasible. Moving request 2 gives
``T_0 = 2``, ``T_1 = 0.5 + 1 + 0.05 = 1.55``; moving request 3 too only adds to
replica 0. The optimum is 2, one move ``(2, 0, 1)``, no load
(``tests/test_comigration.py``).

Backends: :mod:`.milp` (Pyomo + HiGHS, seconds) and :mod:`.cpsat` (OR-Tools,
integer nanoseconds, :mod:`.cpsat.scale`), both through the solve driver
(:func:`lsched.formulations.backends.solve`); :class:`MigrationPlan` turns the
returned assignment into moves and adapter loads.
"""

from lsched.formulations.comigration.crowded import crowded_problem
from lsched.formulations.comigration.model import COMIGRATION, free_bound
from lsched.formulations.comigration.plan import MigrationPlan, Move
from lsched.formulations.comigration.problem import (
    MOVE_S,
    PCIE_BYTES_PER_S,
    CoMigrationProblem,
)

__all__ = [
    "COMIGRATION",
    "MOVE_S",
    "PCIE_BYTES_PER_S",
    "CoMigrationProblem",
    "MigrationPlan",
    "Move",
    "crowded_problem",
    "free_bound",
]
