"""lsched: operations research for scheduling LLM inference."""

from lsched.errors import InputError
from lsched.instance import Instance, Request

__all__ = ["InputError", "Instance", "Request"]
