"""Seeded instance generators: arrival processes, length distributions, families.

Compose an instance from small frozen, validated pieces::

    from lsched.generators import LogNormal, Poisson, generate
    inst = generate(1000, arrivals=Poisson(rate_per_s=2.0),
                    prompt=LogNormal(median=512, sigma=1.0, max_tokens=4096),
                    output=LogNormal(median=128, sigma=0.8, max_tokens=2048),
                    seed=0)

or use a literature family: :func:`jaillet` (Jaillet et al. 2025), :func:`gsm8k`
(the GSM8K workload of Pang et al. 2025), :func:`resample` (joint bootstrap of a
trace). Every generator takes an explicit ``seed``; same arguments, same
instance. Each instance records ``family``, ``seed`` and ``params`` so that
:func:`regenerate` rebuilds it. The modules' docstrings carry the sampling rules
and their sources: :mod:`~lsched.generators.arrivals`,
:mod:`~lsched.generators.lengths`, :mod:`~lsched.generators.families`.
"""

from lsched.generators.arrivals import (
    AllAtZero,
    ArrivalProcess,
    Gamma,
    Poisson,
    arrivals_from_params,
)
from lsched.generators.families import (
    FAMILIES,
    generate,
    gsm8k,
    jaillet,
    lengths_digest,
    mean_rate_per_s,
    regenerate,
    resample,
)
from lsched.generators.lengths import (
    Fixed,
    LengthDistribution,
    LogNormal,
    UniformInt,
    length_from_params,
    parse_length_spec,
)

__all__ = [
    "FAMILIES",
    "AllAtZero",
    "ArrivalProcess",
    "Fixed",
    "Gamma",
    "LengthDistribution",
    "LogNormal",
    "Poisson",
    "UniformInt",
    "arrivals_from_params",
    "generate",
    "gsm8k",
    "jaillet",
    "length_from_params",
    "lengths_digest",
    "mean_rate_per_s",
    "parse_length_spec",
    "regenerate",
    "resample",
]
