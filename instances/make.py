"""Regenerate every shipped instance and ``instances/manifest.json``.

Run from the repository root::

    ./run python instances/make.py           # rewrite the files and the manifest
    ./run python instances/make.py --check   # only verify; exit 1 on a mismatch

Each instance is built by :func:`lsched.generators.regenerate` from the family,
size, seed and parameters listed in :data:`INSTANCES`, written with
``lsched.traces.write_trace`` (native CSV) and recorded in the manifest with the
SHA-256 of its file. ``best_objective`` and ``best_bound`` start empty (``null``)
and are filled in by the solver work; re-running this script keeps the values
already recorded for an unchanged file.

Sources of the parameters:

- ``jaillet``: Jaillet et al. 2025 synthetic family (see
  :func:`lsched.generators.jaillet`), all requests at ``t = 0``.
- ``gsm8k``: the GSM8K workload of Pang et al. 2025 (see
  :func:`lsched.generators.gsm8k`), all requests at ``t = 0``.
- ``poisson-lognormal``: Poisson arrivals at 2.5 req/s and lognormal lengths
  fitted by maximum likelihood (median = exp(mean log), sigma = sd of log) to
  ``../shared/traces/azure_code_2023.csv`` (Azure LLM inference trace 2023, code
  service; Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0): 8,819 requests in
  3,436 s (2.57 req/s); ContextTokens median 1,095, log-sd 1.36, max 7,437;
  GeneratedTokens median 16.3, log-sd 0.85, max 1,899. The clips (8,192 and
  2,048 tokens) lie above those maxima.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from lsched.atomic import write_text_atomic
from lsched.generators import regenerate
from lsched.traces import write_trace

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"

_AT_ZERO = {"kind": "zero"}

#: Every shipped instance: file name, instance name, family, n, seed, params.
INSTANCES: tuple[dict[str, Any], ...] = (
    # the README's default: small enough for a proven optimum, yet the KV
    # capacity binds (the requests' peaks sum to several times M)
    {"file": "default.csv", "name": "default", "family": "jaillet", "n": 10,
     "seed": 0, "params": {"arrivals": _AT_ZERO}},
    *(
        {"file": f"jaillet-n{n}-s{seed}.csv", "name": f"jaillet-n{n}-s{seed}",
         "family": "jaillet", "n": n, "seed": seed, "params": {"arrivals": _AT_ZERO}}
        for n, seed in ((10, 1), (20, 2), (40, 3), (60, 4))
    ),
    *(
        {"file": f"gsm8k-n{n}-s{seed}.csv", "name": f"gsm8k-n{n}-s{seed}",
         "family": "gsm8k", "n": n, "seed": seed, "params": {"arrivals": _AT_ZERO}}
        for n, seed in ((100, 0), (1000, 1))
    ),
    {"file": "poisson-lognormal-n500-s0.csv", "name": "poisson-lognormal-n500-s0",
     "family": "synthetic", "n": 500, "seed": 0,
     "params": {
         "arrivals": {"kind": "poisson", "rate_per_s": 2.5},
         "prompt": {"kind": "lognormal", "median": 1095.0, "sigma": 1.36,
                    "max_tokens": 8192},
         "output": {"kind": "lognormal", "median": 16.3, "sigma": 0.85,
                    "max_tokens": 2048},
     }},
)  # fmt: skip


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _previous() -> dict[str, dict[str, Any]]:
    if not MANIFEST.exists():
        return {}
    return {e["file"]: e for e in json.loads(MANIFEST.read_text())["instances"]}


def build(directory: Path) -> list[dict[str, Any]]:
    """Write every instance into ``directory``; return the manifest entries."""
    previous = _previous()
    entries = []
    for spec in INSTANCES:
        instance = regenerate(
            spec["family"],
            n=spec["n"],
            seed=spec["seed"],
            params=spec["params"],
            name=spec["name"],
        )
        path = directory / spec["file"]
        write_trace(instance, path)
        digest = sha256_of(path)
        old = previous.get(spec["file"], {})
        same = old.get("sha256") == digest  # results only carry over unchanged
        entries.append(
            {
                "file": spec["file"],
                "name": instance.name,
                "family": instance.family,
                "n": len(instance),
                "seed": instance.seed,
                "params": dict(instance.params),
                "sha256": digest,
                "best_objective": old.get("best_objective") if same else None,
                "best_bound": old.get("best_bound") if same else None,
            }
        )
    return entries


def manifest_text(entries: list[dict[str, Any]]) -> str:
    """The manifest as stable, diff-friendly JSON."""
    record = {
        "description": "lsched shipped instances; regenerate with "
        "`./run python instances/make.py` (see instances/README.md)",
        "instances": entries,
    }
    return json.dumps(record, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify that regenerating reproduces every file",
    )
    args = parser.parse_args(argv)
    if not args.check:
        write_text_atomic(MANIFEST, manifest_text(build(HERE)))
        print(f"wrote {len(INSTANCES)} instances and {MANIFEST.name}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh = {e["file"]: e["sha256"] for e in build(Path(scratch))}
    recorded = {e["file"]: e["sha256"] for e in _previous().values()}
    bad = sorted(
        f
        for f in fresh.keys() | recorded.keys()
        if fresh.get(f) != recorded.get(f)
        or not (HERE / f).exists()
        or sha256_of(HERE / f) != recorded.get(f)
    )
    for name in bad:
        print(f"instances/{name}: does not match its regeneration", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
