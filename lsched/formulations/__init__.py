"""Offline formulations: optimal schedules and lower bounds.

:mod:`~lsched.formulations.slot` holds the data of the slot model (Jaillet et al.
2025, generalised); :mod:`~lsched.formulations.cpsat`,
:mod:`~lsched.formulations.milp` and :mod:`~lsched.formulations.lns` solve it
behind one ``solve(problem, *, time_limit, num_workers, seed, initial_solution,
on_progress, **params)`` signature and return a
:class:`~lsched.formulations.result.SolveResult`;
:mod:`~lsched.formulations.bounds` gives lower bounds that name their objective.
Every schedule is checked by the evaluator, which shares no code with them.
"""
