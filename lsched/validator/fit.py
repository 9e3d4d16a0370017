"""Requests against ``max_model_len`` (the ``max-model-len`` rule on the claimed
records and metrics): which prompts are too long, what a served request emits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.instance import Instance
from lsched.validator.report import IntArray, _Collector


@dataclass(frozen=True)
class _Fit:
    """An instance against ``max_model_len`` (module docstring): ``served`` has
    the outputs a served request emits (a request too long keeps its own),
    ``too_long`` marks ``s_i > L``, ``truncated`` the tokens cut."""

    cap: int
    served: Instance
    too_long: npt.NDArray[np.bool_]
    truncated: IntArray


def _fit(instance: Instance, cap: int) -> _Fit:
    prompt, output = instance.prompt_tokens, instance.output_tokens
    too_long = prompt > cap
    emits = np.where(too_long, output, np.minimum(output, cap - prompt + 1))
    served = instance
    if np.any(emits != output):
        served = instance.replace(output_tokens=emits)
    truncated = np.where(too_long, 0, output - emits).astype(np.int64)
    return _Fit(int(cap), served, too_long, truncated)


def _check_fit_records(
    fit: _Fit,
    requests: pd.DataFrame | None,
    metrics: Mapping[str, float] | None,
    out: _Collector,
) -> None:
    """The ``max-model-len`` rule on the claimed records and metrics: no request
    too long has a replica, a length rejection is of a request too long, and
    ``truncated_tokens`` and ``num_truncated`` are right (where claimed)."""
    cap, too_long = fit.cap, fit.too_long
    prompt = fit.served.prompt_tokens
    served = np.ones(len(too_long), dtype=bool)
    if requests is not None and "replica" in requests.columns:
        replica = requests["replica"].to_numpy()
        served = replica != -1
        for i in np.flatnonzero(too_long & served).tolist():
            out.add(
                "max-model-len",
                f"prompt {int(prompt[i])} tokens > max_model_len {cap}, but it "
                f"is served (replica {replica[i]}); expected it rejected",
                request=i,
            )
    if requests is not None and "rejected" in requests.columns:
        reason = requests["rejected"].astype(str).to_numpy()
        named = np.char.find(reason.astype(str), "max_model_len") >= 0
        for i in np.flatnonzero(named & ~too_long).tolist():
            out.add(
                "max-model-len",
                f"rejected for length ({reason[i]!r}), but its prompt of "
                f"{int(prompt[i])} tokens fits max_model_len {cap}",
                request=i,
            )
    if requests is not None and "truncated_tokens" in requests.columns:
        claimed = requests["truncated_tokens"].to_numpy(dtype=np.float64)
        for i in np.flatnonzero(claimed != fit.truncated).tolist():
            out.add(
                "max-model-len",
                f"truncated_tokens = {float(claimed[i])!r}; with max_model_len "
                f"{cap} it emits {int(fit.served.output_tokens[i])} of its "
                f"{int(fit.truncated[i] + fit.served.output_tokens[i])} tokens, so "
                f"{int(fit.truncated[i])} are cut",
                request=i,
            )
    if metrics is not None and "num_truncated" in metrics:
        count = int(np.count_nonzero(fit.truncated[served & ~too_long]))
        if float(metrics["num_truncated"]) != count:
            out.add(
                "max-model-len",
                f"num_truncated = {metrics['num_truncated']!r}; {count} served "
                f"request(s) are cut at max_model_len {cap}",
            )
