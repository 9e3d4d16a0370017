"""lsched: operations research for scheduling LLM inference.

The names below are the front door, imported on first use: ``import lsched`` (and
so the ``lsched`` command line, ``lsched --help`` included) loads no NumPy;
``lsched.Instance`` loads the instance model and ``lsched.register_policy`` the
policies.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lsched.errors import InputError

if TYPE_CHECKING:  # the types, for checkers; at run time __getattr__ imports them
    from lsched.instance import Instance as Instance
    from lsched.instance import Request as Request

#: Lazily imported names and their modules.
_LAZY = {
    "Instance": "lsched.instance",
    "Request": "lsched.instance",
    "Cluster": "lsched.cluster",
    "Pool": "lsched.cluster",
    "load_cluster": "lsched.cluster",
    "register_policy": "lsched.policies",
    "register_router": "lsched.routers",
    "simulate": "lsched.evaluator",
    "simulate_cluster": "lsched.evaluator",
}

__all__ = ["InputError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lsched' has no attribute {name!r}")
