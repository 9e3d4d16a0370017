"""Reduced-cost fixing against the incumbent (package docstring, "Fixing").

With an optimal LP solution of value ``z`` and reduced costs ``d``, every
integer point ``x'`` of the same region has objective at least ``z + d_q`` if
it uses a column ``q`` with ``d_q > 0``, and at least ``z - d_q`` if it leaves
out a column with ``d_q < 0``. A schedule worth finding has integer objective at
most ``target = U - 1``, so such columns are fixed: to 0, or (``d_q < 0``) to 1,
which rules out the other columns of its request.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.formulations.bounds.clique import Columns
from lsched.formulations.slot.bnc.relaxation import ROUNDING_TOL, LPSolution

BoolArray = npt.NDArray[np.bool_]

#: A column is at its bound (0 or 1) within this; only those are fixed.
AT_BOUND = 1e-6


def fixed_by_cost(
    cols: Columns, solution: LPSolution, allowed: BoolArray, target: int
) -> BoolArray:
    """``allowed`` less the columns no schedule of integer objective ``<=
    target`` in this region can use (module docstring).

    The test is ``z + |d_q| > target + ROUNDING_TOL``, the rounding the slot
    model applies to every LP bound.
    """
    z, d, x = solution.value, solution.reduced, solution.x
    worse = z + np.abs(d) > target + ROUNDING_TOL
    keep = allowed & ~(worse & (d > 0) & (x < AT_BOUND))
    forced = np.flatnonzero(worse & (d < 0) & (x > 1 - AT_BOUND) & allowed)
    if len(forced):
        request = cols.request
        who = np.zeros(int(request.max()) + 1, dtype=bool)
        who[request[forced]] = True
        keep &= ~who[request]
        keep[forced] = True
    return keep
