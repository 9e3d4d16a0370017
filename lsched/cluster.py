"""Clusters: pools of replicas and a router (DESIGN.md, "Clusters").

A :class:`Cluster` is a tuple of :class:`Pool` and a router. A pool has a name, a
role, a replica count, a deployment profile and a policy; replicas are numbered
``0..C-1`` over the pools in order (pool 0's first). The router (a
:class:`~lsched.routers.RouterSpec` or its text ``NAME[:key=value,...]``)
sends each arrival to a replica or rejects it.

Roles: ``colocated`` (a replica prefills and decodes its own requests),
``prefill`` and ``decode`` (disaggregation, :mod:`lsched.evaluator.disagg`): an
arrival is routed to a prefill (or colocated) replica; a request prefilled there
emits token 1 and its KV (``s_i * kv_bytes_per_token`` bytes) moves over the
:class:`Link` between its prefill pool and the decode pool of the decode replica
that ``decode_router`` picks; the KV stays on the prefill replica until the
transfer ends. A cluster with a prefill pool has a decode pool and vice versa. A
pair of pools without a ``[[link]]`` is joined by an ideal link (no latency,
unbounded bandwidth: DistServe's simulator).

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
    host = { memory_bytes = 68719476736 }  # optional: its host tier
                                        # (lsched.tiers; the profile's by default)
    prefix_cache = "lru"                # optional: a prefix cache per replica
                                        # (lsched.prefix.spec; none by default)
    adapters = "max_loras=2"            # optional: LoRA adapters, text or table
                                        # (lsched.adapters; none by default)

    [[pool]]
    model = "llama2-70b-h100-tp4"
    policy = "sarathi:chunk=512"

A disaggregated cluster::

    decode_router = "round-robin"       # optional; round-robin by default
                                        # (least-queued: DistServe's choice)

    [[pool]]
    name = "p"
    role = "prefill"
    model = "opt-13b-a100-tp1-distserve"
    policy = "vllm-v0"

    [[pool]]
    name = "d"
    role = "decode"
    replicas = 2
    model = "opt-13b-a100-tp1-distserve"
    policy = "vllm-v0"
    pull = 0.05                         # optional: DistServe's pull rule

    [[link]]
    from = "p"
    to = "d"
    bandwidth_bytes_per_s = 25e9        # optional; unbounded by default
    latency_s = 0.0001                  # optional; 0 by default
    sharing = "fifo"                    # or "share" (processor sharing)

A prefill pool whose ``prefix_cache`` shares one KV pool among its replicas
(``lru:pool_capacity_tokens=M``, Mooncake's) copies a prefix from one replica's
host memory to another over a ``[[link]]`` from the pool to itself (ideal if
none; :mod:`lsched.evaluator.prefix`, rule 6).

A relative profile path is taken from the cluster file's folder.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsched.adapters import AdapterSpec, parse_adapters
from lsched.checks import check_path
from lsched.errors import InputError
from lsched.policies import PolicySpec, parse_policy
from lsched.prefix.spec import PrefixCacheSpec, parse_prefix_cache
from lsched.profile import DeploymentProfile, load_profile, read_toml
from lsched.routers import RouterSpec, parse_router
from lsched.tiers import host_from_table

#: Pool roles.
ROLES = ("colocated", "prefill", "decode")
#: How transfers on one link meet: first in first out at the full bandwidth, or
#: sharing it equally (processor sharing).
SHARING = ("fifo", "share")


@dataclass(frozen=True)
class Pool:
    """Replicas of one profile under one policy.

    Attributes
    ----------
    profile
        Deployment of every replica of the pool; a policy whose params have
        ``serving_profile(profile)`` (one that keeps KV in host memory,
        :mod:`lsched.policies.infinigen`) serves with the profile it returns.
    policy
        A fresh policy of this spec runs each replica.
    replicas
        Number of replicas, >= 1.
    name
        The pool's name, unique in its cluster.
    role
        ``colocated``, ``prefill`` or ``decode``.
    pull
        Decode pools only: ``None`` (push: a request's KV leaves for its decode
        replica as soon as its prefill ends) or DistServe's pull rule with this
        waiting-block threshold (its ``waiting_block_prop_threshold``, 0.05):
        the replica takes the head of its queue of prefilled requests, reserving
        its prompt's blocks and starting the transfer, only while the blocks of
        the requests it took and has not yet admitted (in transfer, or waiting to
        be prefilled again) are under ``pull * capacity`` and the prompt's blocks
        are free (:mod:`lsched.evaluator.disagg`).
    prefix_cache
        Colocated pools only: a prefix cache on each replica
        (:class:`~lsched.prefix.spec.PrefixCacheSpec` or its text form,
        :mod:`lsched.evaluator.prefix`), or ``None``. Not with a policy that
        swaps KV to the host tier, and no larger than a replica's KV.
    adapters
        Colocated pools only: the LoRA adapters its replicas serve
        (:class:`~lsched.adapters.AdapterSpec`, its text form or a table), or
        ``None``. Their slots' bytes come out of the profile's KV capacity;
        the policy must be one of :data:`ADAPTER_POLICIES`.
    """

    profile: DeploymentProfile
    policy: PolicySpec
    replicas: int = 1
    name: str = "pool0"
    role: str = "colocated"
    pull: float | None = None
    prefix_cache: PrefixCacheSpec | None = None
    adapters: AdapterSpec | None = None

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
            raise InputError(
                f"got {self.role!r}; expected one of {', '.join(ROLES)}",
                field=f"pool {self.name}: role",
            )
        if self.pull is not None:
            pull = _number(self.pull, f"pool {self.name}: pull")
            if self.role != "decode" or not 0 < pull <= 1:
                raise InputError(
                    f"got {self.pull!r} on a {self.role} pool; expected a share in "
                    "(0, 1] on a decode pool",
                    field=f"pool {self.name}: pull",
                )
            object.__setattr__(self, "pull", pull)
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
        object.__setattr__(self, "profile", served_profile(self.policy, self.profile))
        if self.prefix_cache is not None:
            self._check_prefix_cache()
        if self.adapters is not None:
            self._check_adapters()

    def _check_adapters(self) -> None:
        """The pool's adapters: parsed, on a colocated pool under a policy that
        admits by vLLM's ``max_loras`` rule, their slots out of the KV."""
        where = f"pool {self.name}: adapters"
        try:
            spec = parse_adapters(self.adapters)
            profile = spec.serving_profile(self.profile, f"pool {self.name}")
        except InputError as exc:
            raise InputError(
                exc.message, field=f"pool {self.name}: {exc.field}"
            ) from None
        if self.role != "colocated":
            raise InputError(
                f"adapters on a {self.role} pool; expected a colocated pool",
                field=where,
            )
        name = getattr(self.policy, "name", None)
        if name not in ADAPTER_POLICIES:
            raise InputError(
                f"policy {name!r} does not admit by max_loras; expected one of "
                f"{', '.join(ADAPTER_POLICIES)}",
                field=where,
            )
        object.__setattr__(self, "adapters", spec)
        object.__setattr__(self, "profile", profile)

    def _check_prefix_cache(self) -> None:
        """The pool's prefix cache: parsed, on a prefill or colocated pool whose
        policy does not swap, within a replica's KV and host memory."""
        try:
            cache = parse_prefix_cache(self.prefix_cache)
            cache.check_fits(self.profile.kv_capacity_tokens, f"pool {self.name}")
            host, per_token = self.profile.host, self.profile.kv_bytes_per_token
            cache.check_host_fits(
                host.memory_bytes, per_token, self.replicas, f"pool {self.name}"
            )
        except InputError as exc:
            raise InputError(
                exc.message, field=f"pool {self.name}: {exc.field}"
            ) from None
        where = f"pool {self.name}: prefix_cache"
        if self.role == "decode":
            raise InputError(
                "a prefix cache on a decode pool; expected a prefill or colocated "
                "pool (a decode replica prefills nothing it could reuse)",
                field=where,
            )
        if cache.pool_capacity_tokens is not None and self.role != "prefill":
            raise InputError(
                "a KV pool shared by the replicas (pool_capacity_tokens) on a "
                f"{self.role} pool; expected a prefill pool of a disaggregated "
                "cluster (Mooncake's KV pool: the loop steps its replicas in time "
                "order)",
                field=where,
            )
        if getattr(getattr(self.policy, "params", None), "swaps", False):
            raise InputError(
                f"policy {self.policy.label} swaps KV to the host tier, which the "
                "prefix cache does not model; expected a policy that does not swap",
                field=where,
            )
        object.__setattr__(self, "prefix_cache", cache)


#: The policies that admit by :class:`~lsched.policies.base.LoraGate` (``dlora``
#: through its vLLM batches).
ADAPTER_POLICIES = ("fcfs", "vllm", "sarathi", "dlora")


def served_profile(policy: PolicySpec, profile: DeploymentProfile) -> DeploymentProfile:
    """The profile a replica of ``profile`` serves with under ``policy``: the one
    its params' ``serving_profile`` returns (a policy that keeps KV in host memory,
    :mod:`lsched.policies.infinigen`), else ``profile`` itself."""
    serving = getattr(getattr(policy, "params", None), "serving_profile", None)
    return serving(profile) if callable(serving) else profile


@dataclass(frozen=True)
class Link:
    """The link that carries KV from prefill pool ``source`` to decode pool
    ``target``, shared by all their replicas.

    A transfer of ``x`` bytes that gets the whole link takes ``x /
    bandwidth_bytes_per_s`` on it and arrives ``latency_s`` after leaving it.
    ``sharing``: ``fifo`` (one transfer at a time, in the order the prefills
    finish) or ``share`` (the transfers on the link share its bandwidth equally).
    """

    source: str
    target: str
    bandwidth_bytes_per_s: float = math.inf
    latency_s: float = 0.0
    sharing: str = "fifo"

    def __post_init__(self) -> None:
        bandwidth = _number(self.bandwidth_bytes_per_s, "bandwidth_bytes_per_s")
        if not bandwidth > 0:
            raise InputError(
                f"got {bandwidth!r}; expected bytes per second > 0",
                field="bandwidth_bytes_per_s",
            )
        latency = _number(self.latency_s, "latency_s")
        if not 0 <= latency < math.inf:
            raise InputError(
                f"got {latency!r}; expected seconds >= 0", field="latency_s"
            )
        if self.sharing not in SHARING:
            raise InputError(
                f"got {self.sharing!r}; expected one of {', '.join(SHARING)}",
                field="sharing",
            )
        object.__setattr__(self, "bandwidth_bytes_per_s", bandwidth)
        object.__setattr__(self, "latency_s", latency)

    def seconds(self, nbytes: float) -> float:
        """Seconds ``nbytes`` take on the whole link (latency apart)."""
        return nbytes / self.bandwidth_bytes_per_s


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise InputError(f"got {value!r}; expected a number", field=name)
    return float(value)


@dataclass(frozen=True)
class Cluster:
    """Pools, a router for arrivals and, when disaggregated, links and a router
    for prefilled requests.

    Attributes
    ----------
    pools
        At least one pool; names unique.
    router
        Sends each arrival to a prefill or colocated replica: a
        :class:`RouterSpec` or its text; round robin by default.
    links
        Links from prefill to decode pools, or between colocated pools (a pool
        to itself too: live migration); an unlisted pair has an ideal link.
    decode_router
        Sends each prefilled request to a decode replica (its view numbers the
        decode replicas ``0..D-1``); round robin by default.
    """

    pools: tuple[Pool, ...]
    router: RouterSpec = field(default_factory=lambda: parse_router("round-robin"))
    links: tuple[Link, ...] = ()
    decode_router: RouterSpec = field(
        default_factory=lambda: parse_router("round-robin")
    )

    def __post_init__(self) -> None:
        pools = tuple(self.pools)
        object.__setattr__(self, "pools", pools)
        object.__setattr__(self, "links", tuple(self.links))
        for name in ("router", "decode_router"):
            if isinstance(getattr(self, name), str):
                try:
                    spec = parse_router(getattr(self, name))
                except InputError as exc:
                    raise InputError(exc.message, field=name) from None
                object.__setattr__(self, name, spec)
        if not pools:
            raise InputError("expected at least one pool", field="pools")
        names = [p.name for p in pools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(
                f"pool names {twice} appear twice; expected unique names",
                field="pools",
            )
        self._check_roles()
        for k, link in enumerate(self.links):
            self._check_link(k, link)

    def _check_roles(self) -> None:
        roles = {p.role for p in self.pools}
        for have, need in (("prefill", "decode"), ("decode", "prefill")):
            if have in roles and need not in roles:
                k = next(k for k, p in enumerate(self.pools) if p.role == have)
                raise InputError(
                    f"a {have} pool needs a {need} pool; the cluster has none",
                    field=f"pool[{k}].role",
                )

    def _check_link(self, k: int, link: Link) -> None:
        roles = {p.name: p.role for p in self.pools}
        # prefill -> decode (KV transfers), colocated -> colocated (live
        # migration, lsched.evaluator.migration), or a prefill pool to itself
        # (copies within its KV pool, rule 6 of lsched.evaluator.prefix)
        colocated = roles.get(link.source) == "colocated"
        within = link.source == link.target and roles.get(link.source) == "prefill"
        for end, name, role in (("from", link.source, "prefill"),
                                ("to", link.target, "decode")):  # fmt: skip
            role = "colocated" if colocated else "prefill" if within else role
            if name not in roles:
                raise InputError(
                    f"no pool {name!r}; expected one of {sorted(roles)}",
                    field=f"link[{k}].{end}",
                )
            if roles[name] != role:
                raise InputError(
                    f"pool {name!r} has role {roles[name]!r}; expected a {role} pool",
                    field=f"link[{k}].{end}",
                )
        pairs = [(x.source, x.target) for x in self.links[:k]]
        if (link.source, link.target) in pairs:
            raise InputError(
                f"a second link from {link.source!r} to {link.target!r}; expected "
                "one per pair of pools",
                field=f"link[{k}]",
            )

    @property
    def prefix_cached(self) -> bool:
        """Whether some pool runs a prefix cache."""
        return any(p.prefix_cache is not None for p in self.pools)

    @property
    def serves_adapters(self) -> bool:
        """Whether some pool serves LoRA adapters."""
        return any(p.adapters is not None for p in self.pools)

    @property
    def disaggregated(self) -> bool:
        """Whether the cluster has prefill and decode pools."""
        return any(p.role == "decode" for p in self.pools)

    def link(self, source: str, target: str) -> Link:
        """The link from pool ``source`` to pool ``target`` (an ideal one if the
        cluster lists none)."""
        for link in self.links:
            if (link.source, link.target) == (source, target):
                return link
        return Link(source, target)

    def replicas_of(self, *roles: str) -> np.ndarray:
        """The replicas of the pools with one of ``roles``, ascending."""
        keep = [k for k, p in enumerate(self.pools) if p.role in roles]
        return np.flatnonzero(np.isin(self.replica_pool, keep))

    @classmethod
    def colocated(
        cls,
        profile: DeploymentProfile,
        policy: str | PolicySpec,
        replicas: int | None = None,
        router: str | RouterSpec = "round-robin",
        prefix_cache: str | PrefixCacheSpec | None = None,
        adapters: str | AdapterSpec | None = None,
    ) -> Cluster:
        """One colocated pool of ``replicas`` (the profile's by default), with
        a prefix cache on each replica where ``prefix_cache`` names one, and
        the LoRA adapters of ``adapters``."""
        spec = parse_policy(policy) if isinstance(policy, str) else policy
        count = profile.replicas if replicas is None else replicas
        pool = Pool(
            profile, spec, count, name="pool0", prefix_cache=prefix_cache,
            adapters=adapters,
        )  # fmt: skip
        return cls((pool,), router)

    def describe(self) -> str:
        """The topology in one line: what a bound on this cluster holds for.

        ``colocated: 2 x unit-slot`` for one colocated pool; else each pool's
        replicas, role, name and profile, and for a disaggregated cluster the
        link of every pair of prefill and decode pools, e.g. ``disaggregated: 1
        prefill p (opt-13b-a100-tp1-distserve) + 2 decode d
        (opt-13b-a100-tp1-distserve); links p->d 2.5e+10 B/s + 0.0001 s fifo``.
        """
        if len(self.pools) == 1 and not self.disaggregated:
            pool = self.pools[0]
            return colocated_topology(pool.profile.name, pool.replicas)
        pools = " + ".join(
            f"{p.replicas} {p.role} {p.name} ({p.profile.name})" for p in self.pools
        )
        if not self.disaggregated:
            return f"colocated: {pools}"
        links = ", ".join(
            _describe_link(self.link(p.name, d.name))
            for p in self.pools
            if p.role == "prefill"
            for d in self.pools
            if d.role == "decode"
        )
        return f"disaggregated: {pools}; links {links}"

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


def colocated_topology(profile: str, replicas: int) -> str:
    """``colocated: C x PROFILE``: one colocated pool (``--model P --replicas C``)."""
    return f"colocated: {replicas} x {profile}"


def _describe_link(link: Link) -> str:
    if link.bandwidth_bytes_per_s == math.inf and link.latency_s == 0:
        return f"{link.source}->{link.target} ideal"
    return (
        f"{link.source}->{link.target} {link.bandwidth_bytes_per_s:g} B/s + "
        f"{link.latency_s:g} s {link.sharing}"
    )


# -- the TOML file -------------------------------------------------------------------

_CLUSTER_KEYS = {"router", "decode_router", "pool", "link"}
_POOL_KEYS = {
    "name", "role", "replicas", "model", "policy", "set", "pull", "host",
    "prefix_cache", "adapters",
}  # fmt: skip
_LINK_KEYS = {"from", "to", "bandwidth_bytes_per_s", "latency_s", "sharing"}


def load_cluster(path: str | Path) -> Cluster:
    """Read a cluster file (module docstring).

    Raises
    ------
    InputError
        Naming the file and the key (``pool[k].field``) for a missing or unknown
        key, a bad value, an unknown profile, policy or router.
    """
    path = check_path(path, "cluster")
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
    links = data.get("link", [])
    if not isinstance(links, list):
        raise InputError("expected [[link]] tables", file=path, field="link")
    parsed = []
    for k, table in enumerate(links):
        try:
            parsed.append(_link(table))
        except InputError as exc:
            field = f"link[{k}].{exc.field or ''}".rstrip(".")
            raise InputError(exc.message, file=path, field=field) from None
    try:
        return Cluster(
            tuple(pools),
            data.get("router", "round-robin"),
            tuple(parsed),
            data.get("decode_router", "round-robin"),
        )
    except InputError as exc:
        raise exc.located(file=path) from None


def _link(table: Any) -> Link:
    if not isinstance(table, dict):
        raise InputError("expected a table")
    unknown = sorted(set(table) - _LINK_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}; expected {sorted(_LINK_KEYS)}")
    for end in ("from", "to"):
        if not isinstance(table.get(end), str):
            raise InputError(f"got {table.get(end)!r}; expected a pool name", field=end)
    return Link(
        table["from"],
        table["to"],
        table.get("bandwidth_bytes_per_s", math.inf),
        table.get("latency_s", 0.0),
        table.get("sharing", "fifo"),
    )


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
    if "host" in table:  # the pool's host tier (lsched.tiers), over the profile's
        assert profile.host is not None
        profile = profile.replace(host=host_from_table(table["host"], profile.host))
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
        return Pool(
            profile, spec, replicas, name=name, role=role, pull=table.get("pull"),
            prefix_cache=table.get("prefix_cache"), adapters=table.get("adapters"),
        )  # fmt: skip
    except InputError as exc:
        raise InputError(exc.message, field=(exc.field or "").split(": ")[-1]) from None
