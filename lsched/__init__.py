"""lsched: operations research for scheduling LLM inference.

The front door, for notebooks and scripts::

    import lsched

    instance, _ = lsched.read_trace("instances/default.csv")
    profile = lsched.load_profile("unit-slot").replace(kv_capacity_tokens=48)
    run = lsched.simulate(instance, profile, "fcfs")
    best = lsched.solve(lsched.SlotProblem.from_instance(instance, profile))
    report = lsched.bound(instance, profile)
    result = lsched.compare(instance, profile, policies=["fcfs", "sjf"])

Reading and deploying: :func:`read_trace`, :func:`load_profile`,
:func:`load_cluster`, :class:`Instance`, :class:`Request`, :class:`Cluster`,
:class:`Pool`. Scheduling: :func:`simulate` and :func:`simulate_cluster` (the
evaluator, a :class:`SimulationResult`), :func:`solve` (a
:class:`SlotProblem` or :class:`TimedProblem` by any registered backend, a
:class:`SolveResult` with its :class:`Status`), :func:`bound` (every lower bound,
a :class:`BoundReport` of :class:`Bound`), :func:`compare` (bounds, the offline
optimum and policies with their gaps, a :class:`Comparison`). Plug-ins:
:func:`register_policy`, :func:`register_router`. Bad arguments raise
:class:`InputError`.

Every name but :class:`InputError` is imported on first use: ``import lsched``
(and so the ``lsched`` command line, ``lsched --help`` included) loads no NumPy;
``lsched.Instance`` loads the instance model and ``lsched.solve`` a solver stack
only when a backend runs.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lsched.errors import InputError

if TYPE_CHECKING:  # the types, for checkers; at run time __getattr__ imports them
    from lsched.cluster import Cluster as Cluster
    from lsched.cluster import Pool as Pool
    from lsched.cluster import load_cluster as load_cluster
    from lsched.comparison import Comparison as Comparison
    from lsched.comparison import compare as compare
    from lsched.evaluator import SimulationResult as SimulationResult
    from lsched.evaluator import simulate as simulate
    from lsched.evaluator import simulate_cluster as simulate_cluster
    from lsched.formulations.backends import solve as solve
    from lsched.formulations.bounds.suite import Bound as Bound
    from lsched.formulations.bounds.suite import BoundReport as BoundReport
    from lsched.formulations.bounds.suite import bound_report as bound  # noqa: F401
    from lsched.formulations.result import SolveResult as SolveResult
    from lsched.formulations.result import Status as Status
    from lsched.formulations.slot import SlotProblem as SlotProblem
    from lsched.formulations.timed import TimedProblem as TimedProblem
    from lsched.instance import Instance as Instance
    from lsched.instance import Request as Request
    from lsched.policies import register_policy as register_policy
    from lsched.profile import DeploymentProfile as DeploymentProfile
    from lsched.profile import load_profile as load_profile
    from lsched.routers import register_router as register_router
    from lsched.traces import ReadReport as ReadReport
    from lsched.traces import read_trace as read_trace

#: Lazily imported names: the module each comes from and its name there.
_LAZY: dict[str, tuple[str, str]] = {
    # data and deployments
    "Instance": ("lsched.instance", "Instance"),
    "Request": ("lsched.instance", "Request"),
    "read_trace": ("lsched.traces", "read_trace"),
    "ReadReport": ("lsched.traces", "ReadReport"),
    "load_profile": ("lsched.profile", "load_profile"),
    "DeploymentProfile": ("lsched.profile", "DeploymentProfile"),
    "Cluster": ("lsched.cluster", "Cluster"),
    "Pool": ("lsched.cluster", "Pool"),
    "load_cluster": ("lsched.cluster", "load_cluster"),
    # the evaluator
    "simulate": ("lsched.evaluator", "simulate"),
    "simulate_cluster": ("lsched.evaluator", "simulate_cluster"),
    "SimulationResult": ("lsched.evaluator", "SimulationResult"),
    # offline optima and bounds
    "solve": ("lsched.formulations.backends", "solve"),
    "SlotProblem": ("lsched.formulations.slot", "SlotProblem"),
    "TimedProblem": ("lsched.formulations.timed", "TimedProblem"),
    "SolveResult": ("lsched.formulations.result", "SolveResult"),
    "Status": ("lsched.formulations.result", "Status"),
    "bound": ("lsched.formulations.bounds.suite", "bound_report"),
    "Bound": ("lsched.formulations.bounds.suite", "Bound"),
    "BoundReport": ("lsched.formulations.bounds.suite", "BoundReport"),
    "compare": ("lsched.comparison", "compare"),
    "Comparison": ("lsched.comparison", "Comparison"),
    # plug-ins
    "register_policy": ("lsched.policies", "register_policy"),
    "register_router": ("lsched.routers", "register_router"),
}

__all__ = ["InputError", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import a front-door name on first use (PEP 562)."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'lsched' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The front door (PEP 562), for ``dir()`` and tab completion."""
    return sorted(__all__)
