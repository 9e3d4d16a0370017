"""Offline formulations: optimal schedules and lower bounds.

:mod:`~lsched.formulations.slot` holds the data of the slot model (Jaillet et al.
2025, generalised); :mod:`~lsched.formulations.slot.cpsat`,
:mod:`~lsched.formulations.slot.milp` and :mod:`~lsched.formulations.slot.lns` solve it
behind one ``solve(problem, *, time_limit, num_workers, seed, initial_solution,
on_progress, **params)`` signature and return a
:class:`~lsched.formulations.result.SolveResult`
(:func:`~lsched.formulations.backends.solve_slot` picks one by name).
:mod:`~lsched.formulations.bounds.slot` gives the slot model's lower bounds,
:mod:`~lsched.formulations.bounds.work` bounds in seconds for every schedule,
:mod:`~lsched.formulations.bounds.registry` the table of all of them, each with
the objectives, model and schedules it holds for, and
:mod:`~lsched.formulations.bounds.suite` computes that table on an instance.
:mod:`~lsched.formulations.replicas` assigns requests to replicas (Pang et al.
2025's bin packing) and compares with an exact joint model;
:mod:`~lsched.formulations.pang_offline` states that offline stage as an MIP over
assignment and order per client, and shows it equals the packing. Every
schedule is checked by the evaluator, which shares no code with them.
"""
