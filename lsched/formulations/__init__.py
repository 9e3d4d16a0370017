"""Offline formulations: optimal schedules and lower bounds, one layout for all.

Every model has the same shape (PyJobShop's):

``<model>/problem.py``
    The problem data, immutable and validated once (:class:`~.slot.SlotProblem`,
    :class:`~.timed.TimedProblem`, the replica assignment and joint problems).
``<model>/model.py``
    What the solve driver needs of it (:class:`~.driver.Model`): the exact
    objective, the feasibility rule, the warm start, the free bound and how a
    bound may be rounded.
``<model>/<backend>/`` (or ``<backend>.py``)
    Per backend its ``variables``, ``constraints`` and ``objective``, and its
    ``solve``: a search ``@backend(MODEL)`` (:func:`~.driver.backend`) that
    builds them in the driver's run and runs the solver.
:mod:`~.driver`
    The one solve driver: argument checks, wall clock, warm start,
    interruption, incumbent, bound, status (one place, one tolerance:
    :data:`~.result.OPTIMALITY_RTOL`), log and the
    :class:`~.result.SolveResult`.
:mod:`~.backends`
    The registry table of every model's backends and one ``solve(problem,
    backend)``; :mod:`~.solvers` what the backends share of HiGHS and CP-SAT.

The models: :mod:`~.slot` (Jaillet et al. 2025's slot model, generalised;
backends ``cpsat``, ``milp``, ``lns``), :mod:`~.timed` (the slot model's
decisions priced in seconds by the cost model; ``cpsat``, ``milp``),
:mod:`~.replicas` (Pang et al. 2025's assignment of requests to replicas and an
exact joint model), :mod:`~.pang_offline` (that offline stage as an MIP over
assignment and order) and :mod:`~.comigration` (dLoRA's co-migration of
requests and adapters between replicas; ``milp``, ``cpsat``). :mod:`~.bounds`
holds every lower bound in one registry table (:mod:`~.bounds.registry`: the
objectives, model and schedules each holds for) and the suite that computes it;
:mod:`~.scale` searches policy parameters for traces of thousands of requests.
Every schedule is checked by the evaluator, which shares no code with them.
"""
