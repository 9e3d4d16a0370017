"""Deployment profiles: the iteration-time cost model, KV capacity and engine limits.

A profile is a served LLM on given hardware (:class:`DeploymentProfile`): its
iteration-time cost model over the batch features phi (:mod:`lsched.profile.cost`,
which states the model), what one replica runs on and the KV-cache size that gives
(:mod:`lsched.profile.hardware`, which states the formulas), and the engine's
limits (:mod:`lsched.profile.deployment`).

Profiles live in ``models/<name>.toml``; ``models/README.md`` documents the format,
:mod:`lsched.profile.toml` reads and writes it, and :mod:`lsched.profile.catalogue`
finds a profile by name.
"""

from lsched.profile.catalogue import list_profiles, load_profile, models_dir
from lsched.profile.cost import (
    FEATURES,
    NUM_FEATURES,
    OVERHEAD_TOKENS,
    IterationTime,
    batch_features,
)
from lsched.profile.deployment import DeploymentProfile
from lsched.profile.hardware import Hardware, kv_bytes_per_token, kv_capacity_tokens
from lsched.profile.toml import iteration_time_toml, profile_to_toml, read_toml

__all__ = [
    "FEATURES",
    "NUM_FEATURES",
    "OVERHEAD_TOKENS",
    "DeploymentProfile",
    "Hardware",
    "IterationTime",
    "batch_features",
    "iteration_time_toml",
    "kv_bytes_per_token",
    "kv_capacity_tokens",
    "list_profiles",
    "load_profile",
    "models_dir",
    "profile_to_toml",
    "read_toml",
]
