"""Clusters: pools of replicas and a router (DESIGN.md, "Clusters").

A :class:`Cluster` is a tuple of :class:`Pool` and a router. A pool has a name, a
role, a replica count, a deployment profile and a policy; replicas are numbered
``0..C-1`` over the pools in order (pool 0's first). The router (a
:class:`~lsched.routers.RouterSpec` or its text ``NAME[:key=value,...]``)
sends each arrival to a replica or rejects it.

Roles: ``colocated`` (a replica prefills and decodes its own requests). The
disaggregated roles ``prefill`` and ``decode`` of DESIGN.md are not modelled yet
and are refused with a clear error.

``--model P --replicas C`` is :meth:`Cluster.colocated`: one colocated pool of
``C`` replicas of ``P``.

A cluster file (``lsched simulate TRACE --cluster FILE``) is TOML::

    router = "least-outstanding"        # optional; round-robin by default

    [[pool]]
    name = "a100"                       # optional; pool0, pool1, ... by default
    role = "colocated"                  # optional
    replicas = 2                        # optional; 1 by default
    model = "llama2-70b-a100-tp4"       # a profile name or a .toml path
    policy = "vllm"                     # optional; fcfs by default
    set = { max_num_seqs = 128 }        # optional profile overrides (--set)

    [[pool]]
    model = "llama2-70b-h100-tp4"
    policy = "sarathi:chunk=512"

A relative profile path is taken from the cluster file's folder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsched.errors import InputError
from lsched.policies import PolicySpec, parse_policy
from lsched.profile import DeploymentProfile, load_profile, read_toml
from lsched.routers import RouterSpec, parse_router

#: Pool roles the evaluator runs today.
ROLES = ("colocated",)
#: Roles of DESIGN.md still to come.
_LATER_ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class Pool:
    """Replicas of one profile under one policy.

    Attributes
    ----------
    profile
        Deployment of every replica of the pool.
    policy
        A fresh policy of this spec runs each replica.
    replicas
        Number of replicas, >= 1.
    name
        The pool's name, unique in its cluster.
    role
        ``colocated``.
    """

    profile: DeploymentProfile
    policy: PolicySpec
    replicas: int = 1
    name: str = "pool0"
    role: str = "colocated"

    def __post_init__(self) -> None:
        if isinstance(self.policy, str):
            object.__setattr__(self, "policy", parse_policy(self.policy))
        if (
            isinstance(self.replicas, bool)
            or not isinstance(self.replicas, int | np.integer)
            or self.replicas < 1
        ):
            raise InputError(
                f"got {self.replicas!r}; expected an integer >= 1",
                field=f"pool {self.name}: replicas",
            )
        if self.role not in ROLES:
            later = " (not modelled yet)" if self.role in _LATER_ROLES else ""
            raise InputError(
                f"got {self.role!r}{later}; expected one of {', '.join(ROLES)}",
                field=f"pool {self.name}: role",
            )
        if not callable(getattr(self.policy, "make", None)):
            raise InputError(
                f"got {self.policy!r}; expected a PolicySpec or NAME[:key=value,...]",
                field=f"pool {self.name}: policy",
            )
        if not isinstance(self.profile, DeploymentProfile):
            raise InputError(
                f"got {type(self.profile).__name__}; expected a DeploymentProfile",
                field=f"pool {self.name}: profile",
            )


@dataclass(frozen=True)
class Cluster:
    """Pools and a router.

    Attributes
    ----------
    pools
        At least one pool; names unique.
    router
        A :class:`RouterSpec` or its text; round robin by default.
    """

    pools: tuple[Pool, ...]
    router: RouterSpec = field(default_factory=lambda: parse_router("round-robin"))

    def __post_init__(self) -> None:
        pools = tuple(self.pools)
        object.__setattr__(self, "pools", pools)
        if isinstance(self.router, str):
            object.__setattr__(self, "router", parse_router(self.router))
        if not pools:
            raise InputError("expected at least one pool", field="pools")
        names = [p.name for p in pools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(
                f"pool names {twice} appear twice; expected unique names",
                field="pools",
            )

    @classmethod
    def colocated(
        cls,
        profile: DeploymentProfile,
        policy: str | PolicySpec,
        replicas: int | None = None,
        router: str | RouterSpec = "round-robin",
    ) -> Cluster:
        """One colocated pool of ``replicas`` (the profile's by default)."""
        spec = parse_policy(policy) if isinstance(policy, str) else policy
        count = profile.replicas if replicas is None else replicas
        return cls((Pool(profile, spec, count, name="pool0"),), router)

    @property
    def num_replicas(self) -> int:
        """Replicas over all pools."""
        return sum(p.replicas for p in self.pools)

    @functools.cached_property
    def replica_pool(self) -> np.ndarray:
        """The pool index of every replica (read-only)."""
        pools = np.repeat(np.arange(len(self.pools)), [p.replicas for p in self.pools])
        pools.flags.writeable = False
        return pools

    def pool_of(self, replica: int) -> Pool:
        """The pool replica ``replica`` belongs to."""
        return self.pools[int(self.replica_pool[replica])]


# -- the TOML file -------------------------------------------------------------------

_CLUSTER_KEYS = {"router", "pool"}
_POOL_KEYS = {"name", "role", "replicas", "model", "policy", "set"}


def load_cluster(path: str | Path) -> Cluster:
    """Read a cluster file (module docstring).

    Raises
    ------
    InputError
        Naming the file and the key (``pool[k].field``) for a missing or unknown
        key, a bad value, an unknown profile, policy or router.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such cluster file", file=path)
    _, data = read_toml(path)
    unknown = sorted(set(data) - _CLUSTER_KEYS)
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown}; expected {sorted(_CLUSTER_KEYS)}", file=path
        )
    tables = data.get("pool")
    if not isinstance(tables, list) or not tables:
        raise InputError(
            "expected at least one [[pool]] table", file=path, field="pool"
        )
    pools = []
    for k, table in enumerate(tables):
        where = f"pool[{k}]"
        try:
            pools.append(_pool(table, k, path.parent))
        except InputError as exc:
            raise InputError(
                exc.message, file=path, field=f"{where}.{exc.field or ''}".rstrip(".")
            ) from None
    try:
        return Cluster(tuple(pools), data.get("router", "round-robin"))
    except InputError as exc:
        raise exc.located(file=path) from None


def _pool(table: Any, k: int, folder: Path) -> Pool:
    if not isinstance(table, dict):
        raise InputError("expected a table")
    unknown = sorted(set(table) - _POOL_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}; expected {sorted(_POOL_KEYS)}")
    if "model" not in table:
        raise InputError(
            "missing; expected a profile name or .toml path", field="model"
        )
    model = table["model"]
    if not isinstance(model, str):
        raise InputError(f"got {model!r}; expected a string", field="model")
    if model.endswith(".toml") and not Path(model).is_absolute():
        model = str(folder / model)
    overrides = table.get("set", {})
    if not isinstance(overrides, dict):
        raise InputError(f"got {overrides!r}; expected a table", field="set")
    try:
        profile = load_profile(model)
    except InputError as exc:
        raise InputError(exc.message, field="model") from None
    try:
        profile = profile.replace(**overrides)
    except InputError as exc:
        field = "set" if exc.field is None else f"set.{exc.field}"
        raise InputError(exc.message, field=field) from None
    except TypeError as exc:  # a key that is no profile field
        raise InputError(str(exc), field="set") from None
    policy = table.get("policy", "fcfs")
    if not isinstance(policy, str):
        raise InputError(
            f"got {policy!r}; expected NAME[:key=value,...]", field="policy"
        )
    try:
        spec = parse_policy(policy)
    except InputError as exc:
        raise InputError(exc.message, field="policy") from None
    name = table.get("name", f"pool{k}")
    if not isinstance(name, str) or not name:
        raise InputError(f"got {name!r}; expected a non-empty string", field="name")
    role = table.get("role", "colocated")
    replicas = table.get("replicas", 1)
    try:
        return Pool(profile, spec, replicas, name=name, role=role)
    except InputError as exc:
        raise InputError(exc.message, field=(exc.field or "").split(": ")[-1]) from None
