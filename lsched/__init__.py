"""lsched: operations research for scheduling LLM inference.

The names below are the front door; the plug-in calls and the cluster model are
imported on first use (``lsched.register_policy`` loads the policies, not
``import lsched``).
"""

from importlib import import_module
from typing import Any

from lsched.errors import InputError
from lsched.instance import Instance, Request

#: Lazily imported names and their modules.
_LAZY = {
    "Cluster": "lsched.cluster",
    "Pool": "lsched.cluster",
    "load_cluster": "lsched.cluster",
    "register_policy": "lsched.policies",
    "register_router": "lsched.routers",
    "simulate": "lsched.evaluator",
    "simulate_cluster": "lsched.evaluator",
}

__all__ = ["InputError", "Instance", "Request", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lsched' has no attribute {name!r}")
