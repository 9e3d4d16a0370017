"""`lsched models` commands: list the deployment profiles and show one.

Profiles are found by name in the folders of ``$LSCHED_MODELS``, then in the shipped
``models/`` (:mod:`lsched._models`); each name is listed once, as the first folder
has it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lsched._models import ENV_VAR, profile_files
from lsched.cli._common import JSON_HELP, print_json, print_table
from lsched.profile import load_profile

app = typer.Typer(
    help=f"Deployment profiles: models/*.toml and ${ENV_VAR} folders.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("list")
def list_command(
    json_: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List every profile, each name once, with its key figures."""
    # the name a command takes (--model NAME) is the file stem, whatever the file's
    # own name field says
    profiles = {name: load_profile(path) for name, path in profile_files().items()}
    if json_:
        from lsched.provenance import provenance

        record = provenance([("profile", p.path) for p in profiles.values()])
        print_json(
            record.attach(
                {"profiles": [{**p.summary(), "name": n} for n, p in profiles.items()]}
            )
        )
        return
    rows = [
        (
            name,
            f"{p.replicas}x{p.hardware.num_gpus} {p.hardware.gpu}",
            p.kv_capacity_tokens,
            None if p.fit_mape is None else f"{100 * p.fit_mape:.2f} %",
        )
        for name, p in profiles.items()
    ]
    print_table(
        "Deployment profiles",
        ("name", "replicas x GPUs", "KV tokens", "fit MAPE"),
        rows,
    )


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Profile name or a .toml path.")],
    json_: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show one profile: hardware, KV memory, limits and the cost model."""
    profile = load_profile(name)
    summary = profile.summary()
    if json_:
        from lsched.provenance import provenance

        print_json(provenance([("profile", profile.path)]).attach(summary))
        return
    hw = profile.hardware
    it = profile.iteration_time
    rows: list[tuple[str, object]] = [
        ("name", profile.name),
        ("description", profile.description),
        ("accelerator", hw.gpu),
        (
            "GPUs per replica (TP x PP)",
            f"{hw.num_gpus} ({hw.tensor_parallel} x {hw.pipeline_parallel})",
        ),
        ("replicas", profile.replicas),
        ("KV bytes per token", profile.kv_bytes_per_token),
        ("KV capacity (tokens)", profile.kv_capacity_tokens),
        ("KV capacity (blocks)", profile.kv_capacity_blocks),
        ("block tokens", profile.block_tokens),
        ("max_num_seqs", profile.max_num_seqs),
        ("max_num_batched_tokens", profile.max_num_batched_tokens),
        ("max_model_len", profile.max_model_len),
        (
            "fit MAPE",
            None if profile.fit_mape is None else f"{100 * profile.fit_mape:.2f} %",
        ),
        ("overhead (s)", it.overhead_s),
        (f"overhead per {it.overhead_tokens} token (s)", it.overhead_per_token_s),
    ]
    if it.switch_feature is not None:
        rows.append(("regime switch", f"{it.switch_feature} at {list(it.thresholds)}"))
    for r, weights in enumerate(it.regimes):
        for p, piece in enumerate(weights):
            terms = ", ".join(
                f"{feature}={w:.6g}"
                for feature, w in zip(
                    summary["iteration_time"]["regimes"][r][p], piece, strict=True
                )
                if w != 0
            )
            rows.append((f"regime {r} piece {p} (s)", terms or "0"))
    rows += [(f"source: {k}", v) for k, v in profile.sources.items()]
    print_table(f"Profile {profile.name}", ("field", "value"), rows)
