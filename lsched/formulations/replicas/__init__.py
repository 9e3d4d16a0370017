"""Replicas: Pang et al. 2025's minimum-makespan assignment, then sequencing.

B. Pang, K. Li, R. She, F. Wang, "Hybrid offline-online scheduling method for large
language model inference optimization", arXiv:2502.15763 (2025), offline stage: every
request is present at time 0; assign each to one of ``C`` identical replicas
("clients") so as to minimise the largest replica load, a request's load being its
estimated processing time; then each replica runs its own requests. This package gives
that bin packing (MILP and CP-SAT, with a lower bound and an LPT warm start), the
sequencing of each replica (the evaluator under online policies, or the slot model),
and an exact *joint* slot model that chooses replicas and start slots together, to
measure what the two-stage decomposition loses.

The package, by job:

* :mod:`.loads`: each request's load (:func:`request_loads_s`, seconds) and KV
  area (:func:`kv_areas`);
* :mod:`.assignment`: the bin packing (:func:`assign`), its data, LPT heuristic
  (:func:`lpt`) and lower bound (:func:`assignment_lower_bound`), its model for the
  solve driver and its CP-SAT and MILP backends;
* :mod:`.sequence`: each replica's sequencing, by the evaluator's policies
  (:func:`sequence`) or the slot model (:func:`sequence_slots`), and the two stages
  together in the slot model (:func:`decompose`);
* :mod:`.joint`: the exact joint slot model (:func:`solve_joint`) and the
  decomposition's loss against it (:func:`decomposition_loss`);
* :mod:`.slots`: the unit-slot problem and the checks of multi-replica slot
  schedules;
* :mod:`.results`: what these return.

The assignment and the joint model run through the one solve driver
(:mod:`lsched.formulations.driver`), which decides their status, rounds their
bounds and keeps their log.
"""

from lsched.formulations.replicas.assignment import (
    BACKENDS,
    DEFAULT_LOAD_STEPS,
    AssignmentProblem,
    assign,
    assignment_lower_bound,
    lpt,
)
from lsched.formulations.replicas.joint import (
    JointProblem,
    decomposition_loss,
    solve_joint,
)
from lsched.formulations.replicas.loads import kv_areas, request_loads_s
from lsched.formulations.replicas.results import (
    AssignmentResult,
    DecompositionLoss,
    ReplicaSchedule,
    SequenceResult,
)
from lsched.formulations.replicas.sequence import decompose, sequence, sequence_slots

__all__ = [
    "BACKENDS",
    "DEFAULT_LOAD_STEPS",
    "AssignmentProblem",
    "AssignmentResult",
    "DecompositionLoss",
    "JointProblem",
    "ReplicaSchedule",
    "SequenceResult",
    "assign",
    "assignment_lower_bound",
    "decompose",
    "decomposition_loss",
    "kv_areas",
    "lpt",
    "request_loads_s",
    "sequence",
    "sequence_slots",
    "solve_joint",
]
