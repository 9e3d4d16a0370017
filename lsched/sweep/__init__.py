"""Sweeps: every instance x profile x method, one Parquet row per finished case.

A sweep is described by a TOML file (paths in it are relative to that file)::

    [sweep]
    out = "results.parquet"               # default: <config stem>.parquet
    instances = [
        "instances/default.csv",          # any trace format lsched.traces reads
        { path = "traces/azure.csv", format = "azure-code-2023", limit = 50 },
    ]
    profiles = [
        "unit-slot",                      # a models/ name or a .toml path
        { name = "unit-slot", sets = ["kv_capacity_tokens=40"] },
    ]
    policies = ["fcfs", "mc-sf", "sarathi:chunk=256"]
    objective = "latency"                 # latency | makespan | ttft
    replicas = 1                          # default: the profile's
    dispatch = "round-robin"              # round-robin | least-outstanding | least-kv
    predictor = "oracle"                  # output-length predictions (mc-sf, sjf, ...)

    [[sweep.generate]]                    # seeded instances, as `lsched trace gen`
    family = "jaillet"                    # jaillet | gsm8k | poisson | resample
    n = 10
    seeds = [0, 1, 2]                     # or seed = 0
    # rate, cv, prompt, output, kv_capacity, convention, few_shot_tokens,
    # source, format

    [[sweep.solver]]                      # the slot model, as `lsched solve`
    backend = "cpsat"                     # cpsat | milp | lns
    time_limit = 5                        # seconds per solve
    threads = 1                           # solver threads (default 1)
    seed = 0
    # slot_s = 1.0                        # default: as `lsched solve`

A *case* is one (instance, profile, method); the methods are the policies, then the
solver settings. Each case has a stable :attr:`Case.case_id`: a hash of its
canonical description (the instance as written in the config, the profile and its
overrides, the method, the objective, replicas, dispatch and predictor), so it does
not change when the config moves or the cases are reordered, and it changes with
anything that changes the result. It does not hash a trace file's content: after
editing a trace, delete the results (or change the entry) to recompute.

Storage (``out = results.parquet``): each finished case is written as its own
Parquet file ``results.parquet.parts/part-<case_id>.parquet`` through an atomic
rename (:mod:`lsched.atomic`), the moment it finishes; at the end of a run the
parts are consolidated into ``results.parquet`` (atomically) and then removed. A
crash therefore loses no finished case, and :func:`load_results` reads the
consolidated file and the parts at any time, one row per ``case_id`` (a part,
being newer, wins over the consolidated row). A rerun skips every case whose
``case_id`` is already there; only ``--retry-errors`` runs error rows again. Rows of
cases no longer in the config are kept. Two sweeps must not write the same ``out``
at the same time.

Cases run on a :class:`concurrent.futures.Executor`: a
:class:`~concurrent.futures.ProcessPoolExecutor` (``local``) or a Dask cluster
through :meth:`distributed.Client.get_executor` (``dask``). Workers receive the
case's description, not the data, and load the instance and profile themselves,
so Dask workers need lsched installed and the config's files at the same paths.

Row columns (:data:`BASE_COLUMNS`, then the evaluator's metrics for policies):
``objective_value`` is the sweep's objective in seconds as the evaluator scores
the schedule (sum of E2E, makespan or sum of TTFT; for a solver, its schedule's
replay, slots times ``slot_s``), ``bound`` and ``gap`` the solver's proven lower
bound (seconds) and certified gap; ``status`` is ``ok`` for a policy, the solver's
status (``optimal``, ``feasible``, ``time_limit``, ``infeasible``, ``unknown``) for
a solver, or ``error`` with the reason in ``error`` when the case could not run
(bad input for that case, a policy breaking the rules, a failed replay check).
``provenance`` is the JSON record of the run that stored the row
(:mod:`lsched.provenance`): the lsched version, the time the run started, the
command line, the SHA-256 of this case's files (the config, the trace or a
generator's source, the profile's TOML), the policy's label, the solver's or
generator's seed and the solver's time limit. It is per row, not per file,
because the rows of one file come from several runs (a rerun adds only the
missing cases); each file is hashed once per run, when the run starts.
Only :data:`TIMING_COLUMNS` differ between two runs of the same case.
"""

from __future__ import annotations

from lsched.sweep.cases import (
    Case,
    InstanceSource,
    ProfileSetting,
    SolverSetting,
    case_provenance,
    run_case,
)
from lsched.sweep.config import SweepConfig, load_config
from lsched.sweep.executors import (
    EXECUTORS,
    WORKER_GRACE_S,
    check_executor,
    open_executor,
)
from lsched.sweep.runner import SweepReport, run_sweep
from lsched.sweep.store import (
    BASE_COLUMNS,
    TIMING_COLUMNS,
    check_out,
    consolidate,
    load_results,
    parts_dir,
    write_part,
)

__all__ = [
    "BASE_COLUMNS",
    "EXECUTORS",
    "TIMING_COLUMNS",
    "WORKER_GRACE_S",
    "Case",
    "InstanceSource",
    "ProfileSetting",
    "SolverSetting",
    "SweepConfig",
    "SweepReport",
    "case_provenance",
    "check_executor",
    "check_out",
    "consolidate",
    "load_config",
    "load_results",
    "open_executor",
    "parts_dir",
    "run_case",
    "run_sweep",
    "write_part",
]
