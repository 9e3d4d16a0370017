"""Fitting the iteration-time cost model to measured iteration times.

Given m measured batches with features ``A`` (m x 6, phi = [1, P, Q, D, K, H], see
:mod:`lsched.profile`) and times ``y`` (seconds), :func:`fit_iteration_time` finds
non-negative weights ``w`` of one affine piece with :func:`scipy.optimize.nnls`:

* ``relative=True`` (default): minimise ``sum_i ((A_i . w - y_i) / y_i)^2``, the
  squared *relative* errors, by scaling row i by ``1 / y_i``. Measured iteration
  times span two orders of magnitude (a 30 ms decode step, a 3 s prefill of 32k
  tokens); absolute least squares would fit the long prefills and ignore the decode
  steps that dominate a schedule's iteration count.
* ``relative=False``: ordinary least squares on seconds.

Weights are non-negative because every feature adds work; this also keeps the fitted
piece monotone in each feature, which the timed MILP relies on.

Reported errors: ``mape = mean_i |pred_i - y_i| / y_i`` and ``max_ape`` as fractions
(0.05 = 5 %), and ``rmse_s`` in seconds.

Measurement files (:func:`read_measurements`):

* ``features``: a CSV with a ``time_s`` column and any of the feature columns
  (:data:`lsched.profile.FEATURES`); a missing ``const`` column means 1, any other
  missing feature means 0.
* ``splitwise``: splitwise-sim's ``perf_model.csv`` (Patel et al., "Splitwise",
  ISCA 2024; MIT). Each row gives two observations, times in ms (splitwise-sim's
  ``DatabasePerformanceModel`` divides both by 1000):

  - ``prompt_time``: one prefill iteration of ``batch_size`` prompts of
    ``prompt_size`` tokens: P = b*s, Q = b*s^2, H = 1, D = K = 0;
  - ``token_time``: the mean time of one decode iteration of ``batch_size``
    requests over the generation of ``token_size`` tokens. The decode step that
    emits token j reads s + j - 1 KV tokens, j = 2..t, whose mean is s + t/2, and
    the cost model is affine in K, so the mean time is the time at
    D = b, K = b * (s + t/2), P = Q = H = 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

from lsched.checks import read_text
from lsched.errors import InputError
from lsched.profile import FEATURES, NUM_FEATURES, IterationTime

FloatArray = npt.NDArray[np.float64]

#: Columns a Splitwise perf_model.csv must have.
SPLITWISE_COLUMNS: tuple[str, ...] = (
    "model",
    "hardware",
    "tensor_parallel",
    "prompt_size",
    "batch_size",
    "token_size",
    "prompt_time",
    "token_time",
)


@dataclass(frozen=True, eq=False)
class FitResult:
    """Result of :func:`fit_iteration_time`.

    Attributes
    ----------
    weights
        Shape ``(6,)``, seconds per unit of each feature (0 for columns not fitted).
    mape
        Mean absolute percentage error on the measurements, as a fraction.
    max_ape
        Largest absolute percentage error, as a fraction.
    rmse_s
        Root-mean-square error in seconds.
    n
        Number of measurements.
    columns
        The features that were fitted.
    relative
        Whether relative (True) or absolute (False) squared errors were minimised.
    """

    weights: FloatArray
    mape: float
    max_ape: float
    rmse_s: float
    n: int
    columns: tuple[str, ...]
    relative: bool = True

    def iteration_time(self) -> IterationTime:
        """The fit as a one-piece :class:`~lsched.profile.IterationTime`."""
        return IterationTime(regimes=(self.weights[np.newaxis, :],))

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": dict(zip(FEATURES, self.weights.tolist(), strict=True)),
            "mape": self.mape,
            "max_ape": self.max_ape,
            "rmse_s": self.rmse_s,
            "n": self.n,
            "columns": list(self.columns),
            "relative": self.relative,
        }


def prediction_errors(
    features: npt.ArrayLike, time_s: npt.ArrayLike, weights: npt.ArrayLike
) -> tuple[float, float, float]:
    """``(mape, max_ape, rmse_s)`` of one affine piece ``weights`` on measurements."""
    a = np.asarray(features, dtype=np.float64)
    y = np.asarray(time_s, dtype=np.float64)
    residual = a @ np.asarray(weights, dtype=np.float64) - y
    ape = np.abs(residual) / y
    return float(ape.mean()), float(ape.max()), float(np.sqrt(np.mean(residual**2)))


def fit_iteration_time(
    features: npt.ArrayLike,
    time_s: npt.ArrayLike,
    *,
    columns: Sequence[str] | None = None,
    relative: bool = True,
) -> FitResult:
    """Fit one non-negative affine piece ``t = w . phi`` to measured times.

    Parameters
    ----------
    features
        Shape ``(m, 6)``, the phi of each measured batch.
    time_s
        Shape ``(m,)``, measured seconds (> 0).
    columns
        Features to fit (names from :data:`~lsched.profile.FEATURES`); the others
        get weight 0. Default: every feature with a non-zero entry.
    relative
        Minimise squared relative errors (default) or squared seconds.

    Raises
    ------
    InputError
        On shapes that do not match, non-finite or negative features, times that
        are not positive, unknown column names, or fewer measurements than columns.
    """
    a = np.asarray(features, dtype=np.float64)
    y = np.asarray(time_s, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != NUM_FEATURES:
        raise InputError(
            f"got shape {a.shape}; expected (m, {NUM_FEATURES})", field="features"
        )
    if y.shape != (a.shape[0],):
        raise InputError(
            f"got shape {y.shape}; expected ({a.shape[0]},), one time per batch",
            field="time_s",
        )
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        i = int(np.flatnonzero(~(np.isfinite(a) & (a >= 0)).all(axis=1))[0])
        raise InputError(
            f"measurement {i}: got {a[i].tolist()}; expected finite features >= 0",
            field="features",
        )
    if not np.all(np.isfinite(y) & (y > 0)):
        i = int(np.flatnonzero(~(np.isfinite(y) & (y > 0)))[0])
        raise InputError(
            f"measurement {i}: got {y[i]}; expected a time > 0 seconds", field="time_s"
        )
    if columns is None:
        chosen = [j for j in range(NUM_FEATURES) if np.any(a[:, j] != 0)]
    else:
        unknown = [c for c in columns if c not in FEATURES]
        if unknown:
            raise InputError(
                f"unknown feature {unknown[0]!r}; expected some of "
                f"{', '.join(FEATURES)}",
                field="columns",
            )
        chosen = sorted({FEATURES.index(c) for c in columns})
    if not chosen:
        raise InputError("no feature to fit", field="columns")
    if a.shape[0] < len(chosen):
        raise InputError(
            f"got {a.shape[0]} measurement(s) for {len(chosen)} weights; expected at "
            "least as many measurements as fitted features",
            field="features",
        )
    design = a[:, chosen]
    target = y
    if relative:
        design = design / y[:, np.newaxis]
        target = np.ones_like(y)
    # scale columns to unit norm: P, Q and K differ by many orders of magnitude and
    # NNLS's active-set steps are not scale invariant in floating point
    norms = np.linalg.norm(design, axis=0)
    norms[norms == 0] = 1.0
    solution, _ = nnls(design / norms, target, maxiter=50 * len(chosen))
    weights = np.zeros(NUM_FEATURES, dtype=np.float64)
    weights[chosen] = solution / norms
    mape, max_ape, rmse = prediction_errors(a, y, weights)
    return FitResult(
        weights=weights,
        mape=mape,
        max_ape=max_ape,
        rmse_s=rmse,
        n=int(a.shape[0]),
        columns=tuple(FEATURES[j] for j in chosen),
        relative=relative,
    )


# -- reading measurements ------------------------------------------------------


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"got {text!r}; expected a number", file=path, line=line, field=column
        ) from None
    if not math.isfinite(value):
        raise InputError(
            f"got {text!r}; expected a finite number",
            file=path,
            line=line,
            field=column,
        )
    return value


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    text = read_text(path, "a CSV file of measurements (UTF-8 text)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    rows = [(reader.line_num, row) for row in reader]
    if not header:
        raise InputError("empty file; expected a CSV header", file=path, line=1)
    return header, rows


def read_measurements(
    path: str | PathLike[str],
    format: str = "features",
    *,
    model: str | None = None,
    hardware: str | None = None,
    tp: int | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Read measured iteration times as ``(features (m, 6), time_s (m,))``.

    Parameters
    ----------
    path
        The CSV file.
    format
        ``"features"`` or ``"splitwise"`` (module docstring).
    model, hardware, tp
        Splitwise only: which (model, hardware, tensor_parallel) group to read.
        Each may be omitted when the file holds a single value for it.

    Raises
    ------
    InputError
        Naming the file, line and column of a bad value, a missing column, or an
        ambiguous or empty Splitwise selection (listing what the file holds).
    """
    path = Path(path)
    if format == "features":
        return _read_features(path)
    if format == "splitwise":
        return _read_splitwise(path, model=model, hardware=hardware, tp=tp)
    raise InputError(
        f"got {format!r}; expected 'features' or 'splitwise'", field="format"
    )


def _read_features(path: Path) -> tuple[FloatArray, FloatArray]:
    header, rows = _read_rows(path)
    allowed = {*FEATURES, "time_s"}
    unknown = [c for c in header if c not in allowed]
    if unknown:
        raise InputError(
            f"unknown column {unknown[0]!r}; expected time_s and some of "
            f"{', '.join(FEATURES)}",
            file=path,
            line=1,
            field=unknown[0],
        )
    if "time_s" not in header:
        raise InputError("missing column", file=path, line=1, field="time_s")
    if not rows:
        raise InputError("no measurements after the header", file=path, line=2)
    features = np.zeros((len(rows), NUM_FEATURES), dtype=np.float64)
    features[:, 0] = 1.0
    times = np.zeros(len(rows), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        for j, name in enumerate(FEATURES):
            if name in row:
                value = _number(row[name] or "", path, line, name)
                if value < 0:
                    raise InputError(
                        f"got {value}; expected >= 0", file=path, line=line, field=name
                    )
                features[i, j] = value
        times[i] = _number(row["time_s"] or "", path, line, "time_s")
        if times[i] <= 0:
            raise InputError(
                f"got {times[i]}; expected > 0 seconds",
                file=path,
                line=line,
                field="time_s",
            )
    return features, times


def _read_splitwise(
    path: Path, *, model: str | None, hardware: str | None, tp: int | None
) -> tuple[FloatArray, FloatArray]:
    header, rows = _read_rows(path)
    for column in SPLITWISE_COLUMNS:
        if column not in header:
            raise InputError("missing column", file=path, line=1, field=column)
    wanted = {"model": model, "hardware": hardware, "tensor_parallel": tp}
    for key, value in list(wanted.items()):
        present = sorted({row[key] for _, row in rows}, key=str)
        if value is None:
            if len(present) != 1:
                raise InputError(
                    f"the file holds several values {present}; choose one "
                    f"(--{'tp' if key == 'tensor_parallel' else key})",
                    file=path,
                    field=key,
                )
            wanted[key] = present[0]
        elif str(value) not in present:
            raise InputError(
                f"no rows with {key} = {value!r}; the file holds {present}",
                file=path,
                field=key,
            )
    selected = [
        (line, row)
        for line, row in rows
        if all(row[k] == str(v) for k, v in wanted.items())
    ]
    features = np.zeros((2 * len(selected), NUM_FEATURES), dtype=np.float64)
    times = np.zeros(2 * len(selected), dtype=np.float64)
    for i, (line, row) in enumerate(selected):
        values = {}
        for column in ("prompt_size", "batch_size", "token_size"):
            value = _number(row[column], path, line, column)
            if value < 1 or value != int(value):
                raise InputError(
                    f"got {row[column]!r}; expected an integer >= 1",
                    file=path,
                    line=line,
                    field=column,
                )
            values[column] = value
        for column in ("prompt_time", "token_time"):
            value = _number(row[column], path, line, column)
            if value <= 0:
                raise InputError(
                    f"got {value}; expected > 0 ms", file=path, line=line, field=column
                )
            values[column] = value
        s, b, t = values["prompt_size"], values["batch_size"], values["token_size"]
        # prefill iteration: b prompts of s tokens, none chunked
        features[2 * i] = (1.0, b * s, b * s * s, 0.0, 0.0, 1.0)
        times[2 * i] = values["prompt_time"] / 1000.0
        # mean decode iteration: b steps reading s + t/2 tokens each on average
        features[2 * i + 1] = (1.0, 0.0, 0.0, b, b * (s + t / 2.0), 0.0)
        times[2 * i + 1] = values["token_time"] / 1000.0
    return features, times


def splitwise_groups(path: str | PathLike[str]) -> list[tuple[str, str, int]]:
    """The (model, hardware, tensor_parallel) groups of a Splitwise perf_model.csv."""
    header, rows = _read_rows(Path(path))
    for column in ("model", "hardware", "tensor_parallel"):
        if column not in header:
            raise InputError("missing column", file=path, line=1, field=column)
    groups = {(r["model"], r["hardware"], r["tensor_parallel"]) for _, r in rows}
    return sorted((m, h, int(t)) for m, h, t in groups)


__all__ = [
    "SPLITWISE_COLUMNS",
    "FitResult",
    "fit_iteration_time",
    "prediction_errors",
    "read_measurements",
    "splitwise_groups",
]
