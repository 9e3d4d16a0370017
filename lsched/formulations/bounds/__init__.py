"""Lower bounds: the slot model's (:mod:`.slot`), in seconds for every schedule
on one pool (:mod:`.work`; with any prefix cache, :mod:`.cached`) and on clusters
(:mod:`.cluster`), the table of all of
them (:mod:`.registry`: each bound's objectives, model and schedules, as data),
what they are computed from (:mod:`.context`) and the suite that computes the
table for an instance (:mod:`.suite`).

How to add a bound
------------------
1. Write its computation: a function in a module of this package (a new one, or
   the module of its model) that takes the instance and deployment, or the slot or
   timed problem, and returns a value in seconds that is ``<=`` the objective of
   every schedule of the class it claims, with the proof in the module docstring.
2. Add one :class:`~.registry.BoundSpec` line to :data:`.registry.BOUNDS`, at
   the place it should be reported: its model and name, the objectives it bounds,
   the :class:`~.registry.Schedules` it holds for (preemption, topology, prefix
   cache: a bound computed from whole prompts holds without a cache only;
   migration: whether it holds when requests move between replicas, with the
   reason in the registry's docstring), a
   ``compute`` that calls step 1's function on a
   :class:`~.context.BoundContext` (returning the value, or a reason and a line
   where there is none), and an ``applies`` check for the conditions and size
   limits of its model, if any.

The suite, ``lsched bound`` and ``lsched compare`` then list it, computed or
skipped with its reason; nothing else registers it. A test can add one for its
own duration with ``monkeypatch.setattr(registry, "BOUNDS", (*registry.BOUNDS,
spec))`` (``tests/test_bound_registry.py``).
"""
