"""The slot model: its data (:mod:`.problem`), warm starts and horizons, backends.

:mod:`.problem` holds :class:`SlotProblem` and the model's math;
:mod:`.incumbent` the heuristics that give every backend its first schedule and
:mod:`.horizon` the safe deadlines derived from it. The backends are
:mod:`.cpsat`, :mod:`.milp`, :mod:`.lns` and :mod:`.bnc` (branch-and-cut), each
run by the one solve driver (:mod:`lsched.formulations.driver`).
"""

from lsched.formulations.slot.problem import (
    NO_LIMIT,
    OBJECTIVES,
    SlotProblem,
    slot_length_s,
)

__all__ = ["NO_LIMIT", "OBJECTIVES", "SlotProblem", "slot_length_s"]
