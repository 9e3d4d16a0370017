"""The timed problem with start windows, as both backends' rows read it.

Both models of the timed problem, the MILP
(:class:`~lsched.formulations.timed.milp.variables.MilpData`) and the CP-SAT model
(:class:`~lsched.formulations.timed.cpsat.variables.CpData`), read the requests
as Python lists within windows ``0 <= S_i <= L_i`` and ``K = max_i (L_i + o_i)``
iterations: :class:`WindowData` holds that part of their data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.formulations.timed.problem import TimedProblem

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class WindowData:
    """The requests of a timed problem within their start windows.

    Attributes
    ----------
    problem
        The timed problem.
    latest
        ``L_i``, the windows' last starts.
    s, o, w, last
        Prompts, outputs, weights and ``L_i`` as lists.
    num
        ``K = max_i (L_i + o_i)`` iterations.
    tables
        KV blocks per request and offset (``k_ij``).
    """

    problem: TimedProblem
    latest: IntArray
    s: list[int]
    o: list[int]
    w: list[int]
    last: list[int]
    num: int
    tables: list[list[int]]

    @staticmethod
    def fields_of(problem: TimedProblem, latest: npt.ArrayLike) -> dict[str, Any]:
        """This class's fields for ``problem`` with windows ``[0, latest_i]``, by
        name (for a subclass's constructor)."""
        latest = np.asarray(latest, dtype=np.int64)
        n = len(problem)
        last = latest.tolist()
        o = problem.output_tokens.tolist()
        return {
            "problem": problem,
            "latest": latest,
            "s": problem.prompt_tokens.tolist(),
            "o": o,
            "w": problem.weight.tolist(),
            "last": last,
            "num": int(max(last[i] + o[i] for i in range(n))),
            "tables": [problem.slots.kv_table(i).tolist() for i in range(n)],
        }

    @property
    def n(self) -> int:
        """Requests."""
        return len(self.s)
