"""Deployment profiles: the iteration-time cost model, KV capacity and engine limits.

Iteration time
--------------
A batch is summarised by the feature vector (DESIGN.md, "The iteration model")

    phi = [1, P, Q, D, K, H]

=====  ====================  ======================================================
index  name                  meaning
=====  ====================  ======================================================
0      ``const``             1
1      ``prefill_tokens``    P = sum over prefill chunks of c (chunk tokens)
2      ``prefill_attention`` Q = sum over prefill chunks of c * (ctx_before + c)
3      ``decode_steps``      D = number of decode steps (requests decoding)
4      ``kv_read_tokens``    K = sum over decode steps of the KV tokens the step
                             holds, its own new token included: the step that
                             emits token j of request i reads s_i + j - 1 tokens
5      ``has_prefill``       H = 1 if the batch has any prefill chunk, else 0
=====  ====================  ======================================================

An :class:`IterationTime` maps phi to seconds:

    regime r(phi) = number of thresholds t_k with phi[switch] >= t_k
                    (regime 0 below the first threshold; DistServe's
                    ``batch_size < threshold`` picks its small-batch fit)
    base(phi)     = max over pieces p of regime r of  w_p . phi
    tokens(phi)   = P + K - D      ("context": prompt tokens plus the KV tokens the
                                    decode steps held *before* their own token), or
                    P + D          ("batched": tokens the forward pass processes)
    t(phi)        = base(phi) + overhead_s + overhead_per_token_s * tokens(phi)

Inside a regime the time is a convex max of affine pieces (a roofline, or one
linear model); a threshold regime models fits that change constants at a batch
size, and the overhead models a simulator's fixed per-iteration cost. The overhead
is affine in phi, so :attr:`IterationTime.effective_regimes` folds it into every
piece for formulations that want pure max-affine pieces.

KV capacity
-----------
``kv_bytes_per_token = 2 (K and V) * num_layers * num_kv_heads * head_dim *
dtype_bytes``, and, unless a profile gives ``capacity_tokens`` directly (e.g.
DistServe's measured figures),

    kv_capacity_tokens = floor((num_gpus * gpu_memory_bytes * memory_utilization
                                - weight_bytes - activation_reserve_bytes)
                               / kv_bytes_per_token)

KV is allocated in blocks of ``block_tokens``; a request holding x tokens uses
``ceil(x / block_tokens)`` blocks and the replica has
``floor(kv_capacity_tokens / block_tokens)`` blocks.

A capacity below ``max_model_len`` tokens is *allowed*: OR instances (Jaillet et
al. 2025) set the memory M per instance, far below any engine's context limit, via
``profile.replace(kv_capacity_tokens=M)``. Whether a request can ever fit is the
instance's and evaluator's business, not the profile's.

Profiles live in ``models/<name>.toml``; ``models/README.md`` documents the format.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched._models import find_profile, profile_files, shipped_models_dir
from lsched._pickle import reduce_record
from lsched.checks import check_int, check_number, check_path, read_text
from lsched.errors import InputError
from lsched.tiers import HostTier, host_from_table

#: Names of the batch features, in the order of phi = [1, P, Q, D, K, H].
FEATURES: tuple[str, ...] = (
    "const",
    "prefill_tokens",
    "prefill_attention",
    "decode_steps",
    "kv_read_tokens",
    "has_prefill",
)
NUM_FEATURES = len(FEATURES)

#: Which tokens the per-token overhead counts, as weights over phi.
OVERHEAD_TOKENS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        # P + K - D: DistServe's add_ray_overhead(sum of current_context_len)
        "context": (0.0, 1.0, 0.0, -1.0, 1.0, 0.0),
        # P + D: the tokens of the forward pass (vLLM's num_batched_tokens)
        "batched": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    }
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# -- batch features ----------------------------------------------------------------


def _int_column(values: npt.ArrayLike, name: str, minimum: int) -> IntArray:
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1:
        raise InputError(f"expected a 1-D array, got shape {array.shape}", field=name)
    if not np.issubdtype(array.dtype, np.integer) and (
        not np.issubdtype(array.dtype, np.floating) or np.any(array != np.round(array))
    ):
        raise InputError(f"expected integers, got dtype {array.dtype}", field=name)
    array = array.astype(np.int64)
    if np.any(array < minimum):
        i = int(np.flatnonzero(array < minimum)[0])
        raise InputError(
            f"entry {i}: got {array[i]}; expected an integer >= {minimum}", field=name
        )
    return array


def batch_features(
    num_batches: int,
    *,
    prefill_batch: npt.ArrayLike = (),
    prefill_tokens: npt.ArrayLike = (),
    prefill_ctx_before: npt.ArrayLike | None = None,
    decode_batch: npt.ArrayLike = (),
    decode_kv_tokens: npt.ArrayLike = (),
) -> FloatArray:
    """Features phi of ``num_batches`` batches from per-chunk and per-step arrays.

    Parameters
    ----------
    num_batches
        Number of batches m; rows of the result.
    prefill_batch
        Batch index (0 <= b < m) of each prefill chunk.
    prefill_tokens
        Tokens c >= 1 of each prefill chunk.
    prefill_ctx_before
        Tokens of the same request already in the KV cache before the chunk
        (0 for an unchunked prefill, the earlier chunks' tokens otherwise, plus any
        reused prefix). ``None`` means all zero.
    decode_batch
        Batch index of each decode step.
    decode_kv_tokens
        KV tokens >= 1 held by each decode step, its own new token included
        (``s_i + j - 1`` for the step that emits token j of request i).

    Returns
    -------
    numpy.ndarray
        Shape ``(num_batches, 6)``, float64, columns as in :data:`FEATURES`.

    Examples
    --------
    One batch with a 100-token prefill and two decode steps reading 10 and 20
    tokens: phi = [1, 100, 10000, 2, 30, 1].

    >>> batch_features(1, prefill_batch=[0], prefill_tokens=[100],
    ...                decode_batch=[0, 0], decode_kv_tokens=[10, 20]).tolist()
    [[1.0, 100.0, 10000.0, 2.0, 30.0, 1.0]]
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int | np.integer):
        raise InputError(f"got {num_batches!r}; expected an int", field="num_batches")
    m = int(num_batches)
    if m < 0:
        raise InputError(f"got {m}; expected >= 0", field="num_batches")
    pb = _int_column(prefill_batch, "prefill_batch", 0)
    pc = _int_column(prefill_tokens, "prefill_tokens", 1)
    pctx = (
        np.zeros_like(pc)
        if prefill_ctx_before is None
        else _int_column(prefill_ctx_before, "prefill_ctx_before", 0)
    )
    db = _int_column(decode_batch, "decode_batch", 0)
    dk = _int_column(decode_kv_tokens, "decode_kv_tokens", 1)
    for name, other, ref, ref_name in (
        ("prefill_tokens", pc, pb, "prefill_batch"),
        ("prefill_ctx_before", pctx, pb, "prefill_batch"),
        ("decode_kv_tokens", dk, db, "decode_batch"),
    ):
        if len(other) != len(ref):
            raise InputError(
                f"has {len(other)} entries; expected {len(ref)} (one per entry of "
                f"{ref_name})",
                field=name,
            )
    for name, index in (("prefill_batch", pb), ("decode_batch", db)):
        if np.any(index >= m):
            i = int(np.flatnonzero(index >= m)[0])
            raise InputError(
                f"entry {i}: got batch {index[i]}; expected < num_batches = {m}",
                field=name,
            )
    phi = np.zeros((m, NUM_FEATURES), dtype=np.float64)
    phi[:, 0] = 1.0
    # bincount sums exactly in float64 for token counts below 2**53
    phi[:, 1] = np.bincount(pb, weights=pc.astype(np.float64), minlength=m)
    phi[:, 2] = np.bincount(
        pb, weights=(pc * (pctx + pc)).astype(np.float64), minlength=m
    )
    phi[:, 3] = np.bincount(db, minlength=m).astype(np.float64)
    phi[:, 4] = np.bincount(db, weights=dk.astype(np.float64), minlength=m)
    phi[:, 5] = (np.bincount(pb, minlength=m) > 0).astype(np.float64)
    return phi


# -- iteration time ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class IterationTime:
    """Iteration time in seconds as a function of phi (see the module docstring).

    Parameters
    ----------
    regimes
        One array of shape ``(pieces, 6)`` per regime: weights over phi, seconds
        per feature unit. Within a regime the time is the max over pieces.
    switch_feature
        Name (from :data:`FEATURES`) of the feature whose value picks the regime;
        required when there are several regimes.
    thresholds
        Strictly increasing thresholds, ``len(regimes) - 1`` of them: regime k
        applies where ``thresholds[k-1] <= phi[switch] < thresholds[k]``.
    overhead_s
        Fixed time added to every iteration, seconds (>= 0).
    overhead_per_token_s
        Time added per overhead token, seconds (>= 0).
    overhead_tokens
        Which tokens count for the per-token overhead: ``"context"`` (P + K - D)
        or ``"batched"`` (P + D); see :data:`OVERHEAD_TOKENS`.

    Raises
    ------
    InputError
        On a non-finite weight, a shape other than ``(pieces >= 1, 6)``, thresholds
        that are not increasing or do not match the regimes, an unknown switch
        feature, or a negative overhead.
    """

    regimes: tuple[FloatArray, ...]
    switch_feature: str | None = None
    thresholds: tuple[float, ...] = ()
    overhead_s: float = 0.0
    overhead_per_token_s: float = 0.0
    overhead_tokens: str = "context"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        regimes = self.regimes
        if isinstance(regimes, np.ndarray) and regimes.ndim == 2:
            regimes = (regimes,)  # a single regime given as one (pieces, 6) array
        frozen: list[FloatArray] = []
        for r, weights in enumerate(regimes):
            name = f"iteration_time.regimes[{r}]"
            try:
                array = np.array(weights, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise InputError(f"expected numbers: {exc}", field=name) from None
            if array.ndim == 1:
                array = array[np.newaxis, :]
            if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != NUM_FEATURES:
                raise InputError(
                    f"got shape {array.shape}; expected (pieces >= 1, "
                    f"{NUM_FEATURES}) weights over {', '.join(FEATURES)}",
                    field=name,
                )
            if not np.all(np.isfinite(array)):
                p, f = np.argwhere(~np.isfinite(array))[0]
                raise InputError(
                    f"got {array[p, f]}; expected a finite weight",
                    field=f"{name}.pieces[{p}].{FEATURES[f]}",
                )
            array.flags.writeable = False
            frozen.append(array)
        if not frozen:
            raise InputError(
                "expected at least one regime", field="iteration_time.regimes"
            )
        set_(self, "regimes", tuple(frozen))
        thresholds = tuple(
            check_number(t, f"iteration_time.thresholds[{k}]")
            for k, t in enumerate(self.thresholds)
        )
        set_(self, "thresholds", thresholds)
        if len(thresholds) != len(frozen) - 1:
            raise InputError(
                f"got {len(thresholds)} threshold(s) for {len(frozen)} regime(s); "
                "expected one fewer threshold than regimes",
                field="iteration_time.thresholds",
            )
        if any(b <= a for a, b in itertools.pairwise(thresholds)):
            raise InputError(
                f"got {list(thresholds)}; expected strictly increasing thresholds",
                field="iteration_time.thresholds",
            )
        if self.switch_feature is not None and self.switch_feature not in FEATURES:
            raise InputError(
                f"unknown feature {self.switch_feature!r}; expected one of "
                f"{', '.join(FEATURES)}",
                field="iteration_time.switch_feature",
            )
        if len(frozen) > 1 and self.switch_feature is None:
            raise InputError(
                "several regimes need a switch_feature to choose between them",
                field="iteration_time.switch_feature",
            )
        for name in ("overhead_s", "overhead_per_token_s"):
            value = check_number(getattr(self, name), f"iteration_time.{name}")
            if value < 0:
                raise InputError(
                    f"got {value}; expected >= 0 seconds",
                    field=f"iteration_time.{name}",
                )
            set_(self, name, value)
        if self.overhead_tokens not in OVERHEAD_TOKENS:
            raise InputError(
                f"got {self.overhead_tokens!r}; expected one of "
                f"{', '.join(OVERHEAD_TOKENS)}",
                field="iteration_time.overhead_tokens",
            )

    # -- evaluation -----------------------------------------------------------------

    @property
    def num_regimes(self) -> int:
        return len(self.regimes)

    @property
    def overhead_weights(self) -> FloatArray:
        """The overhead as weights over phi (overhead_s on ``const`` plus tokens)."""
        weights = self.overhead_per_token_s * np.asarray(
            OVERHEAD_TOKENS[self.overhead_tokens], dtype=np.float64
        )
        weights[0] += self.overhead_s
        return weights

    @property
    def effective_regimes(self) -> tuple[FloatArray, ...]:
        """Regimes with the overhead folded into every piece (max-affine form)."""
        extra = self.overhead_weights
        return tuple(w + extra for w in self.regimes)

    def check_positive(self, max_model_len: int) -> None:
        """Raise InputError unless every batch an engine can form takes > 0 s.

        The rule is sound and linear. A batch of ``P`` prefill tokens and ``D``
        decode steps (one of them at least) has ``P <= Q <= L * P`` and
        ``D <= K <= L * D``, ``L = max_model_len``: a chunk of ``c`` tokens after
        ``x`` cached ones adds ``c * (x + c)`` to ``Q`` with ``1 <= x + c <= L``,
        and a decode step reads between 1 and ``L`` KV tokens. So an affine piece
        ``w`` (overhead folded in) takes at least ``const + H * has_prefill +
        P * a + D * b``, with ``a = prefill_tokens + min(prefill_attention,
        L * prefill_attention)`` the least time of one more prefill token and
        ``b = decode_steps + min(kv_read_tokens, L * kv_read_tokens)`` that of
        one more decode step. The piece is positive on every batch if and only if
        (for unbounded ``P`` and ``D``) ``a >= 0``, ``b >= 0``, and the two
        smallest batches take > 0 s: one decode step, ``const + b``, and one
        one-token prefill, ``const + has_prefill + a``. A regime passes if one of
        its pieces does (the time is their max); every regime is checked on every
        batch, not only those its switch gives it, which keeps the rule simple and
        can only refuse more.

        Weights may be negative: DistServe's fits have ``has_prefill < 0`` (the
        prefill constant below the decode one) and ``prefill_attention < 0`` (a
        concave prefill fit); they pass while the time stays positive up to
        ``max_model_len``.
        """
        longest = float(max_model_len)
        for r, regime in enumerate(self.effective_regimes):
            problems = []
            for w in regime:
                const, p, q, d, k, h = (float(x) for x in w)
                per_prefill = p + min(q, q * longest)
                per_decode = d + min(k, k * longest)
                found = [
                    (per_decode < 0, "one more decode step", per_decode, ">= 0"),
                    (per_prefill < 0, "one more prefill token", per_prefill, ">= 0"),
                    (const + per_decode <= 0, "a batch of one decode step",
                     const + per_decode, "> 0"),
                    (const + h + per_prefill <= 0, "a batch of one prefill token",
                     const + h + per_prefill, "> 0"),
                ]  # fmt: skip
                problems.append([f for f in found if f[0]])
            if all(problems):
                _, what, seconds, bound = problems[0][0]
                raise InputError(
                    f"{what} can take {seconds:.6g} s (with max_model_len "
                    f"{max_model_len}); expected {bound} s, so that every batch "
                    "takes a positive time",
                    field=f"iteration_time.regimes[{r}]",
                )

    def regime_of(self, phi: npt.ArrayLike) -> IntArray:
        """Regime index of each batch, shape ``phi.shape[:-1]``."""
        phi = self._check(phi)
        if self.num_regimes == 1:
            return np.zeros(phi.shape[:-1], dtype=np.int64)
        assert self.switch_feature is not None
        x = phi[..., FEATURES.index(self.switch_feature)]
        # side="right": a value equal to a threshold is in the upper regime
        return np.searchsorted(np.asarray(self.thresholds), x, side="right").astype(
            np.int64
        )

    def __call__(self, phi: npt.ArrayLike) -> FloatArray:
        """Seconds per batch: phi of shape ``(..., 6)`` -> shape ``(...)``."""
        phi = self._check(phi)
        # each regime's convex max; the regimes are few (1 or 2), batches many
        per_regime = np.stack(
            [np.max(phi @ w.T, axis=-1) for w in self.regimes], axis=-1
        )
        if self.num_regimes == 1:
            base = per_regime[..., 0]
        else:
            index = self.regime_of(phi)
            base = np.take_along_axis(per_regime, index[..., np.newaxis], axis=-1)[
                ..., 0
            ]
        tokens = phi @ np.asarray(OVERHEAD_TOKENS[self.overhead_tokens])
        return base + self.overhead_s + self.overhead_per_token_s * tokens

    @staticmethod
    def _check(phi: npt.ArrayLike) -> FloatArray:
        array = np.asarray(phi, dtype=np.float64)
        if array.ndim == 0 or array.shape[-1] != NUM_FEATURES:
            raise InputError(
                f"got shape {array.shape}; expected (..., {NUM_FEATURES}) features "
                f"{', '.join(FEATURES)}",
                field="phi",
            )
        return array

    def to_dict(self) -> dict[str, Any]:
        """A JSON-like dict (weights as feature -> seconds mappings per piece)."""
        return {
            "switch_feature": self.switch_feature,
            "thresholds": list(self.thresholds),
            "overhead_s": self.overhead_s,
            "overhead_per_token_s": self.overhead_per_token_s,
            "overhead_tokens": self.overhead_tokens,
            "regimes": [
                [dict(zip(FEATURES, piece.tolist(), strict=True)) for piece in w]
                for w in self.regimes
            ],
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IterationTime):
            return NotImplemented
        return (
            self.num_regimes == other.num_regimes
            and all(
                a.shape == b.shape and np.array_equal(a, b)
                for a, b in zip(self.regimes, other.regimes, strict=True)
            )
            and (self.switch_feature, self.thresholds, self.overhead_tokens)
            == (other.switch_feature, other.thresholds, other.overhead_tokens)
            and (self.overhead_s, self.overhead_per_token_s)
            == (other.overhead_s, other.overhead_per_token_s)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays


# -- deployment profile --------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """What one replica runs on.

    Parameters
    ----------
    gpu
        Accelerator name, e.g. ``"A100-SXM4-80GB"`` (``"abstract"`` for unit slots).
    num_gpus
        Accelerators per replica; must equal ``tensor_parallel * pipeline_parallel``.
    tensor_parallel, pipeline_parallel
        Parallelism degrees (>= 1).
    gpu_memory_bytes
        Memory of one accelerator, if known (bytes).
    """

    gpu: str
    num_gpus: int
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gpu, str) or not self.gpu:
            raise InputError(
                f"got {self.gpu!r}; expected a non-empty name", field="hardware.gpu"
            )
        for name in ("num_gpus", "tensor_parallel", "pipeline_parallel"):
            check_int(getattr(self, name), f"hardware.{name}", 1)
        if self.num_gpus != self.tensor_parallel * self.pipeline_parallel:
            raise InputError(
                f"got {self.num_gpus}; expected tensor_parallel * pipeline_parallel "
                f"= {self.tensor_parallel * self.pipeline_parallel} accelerators per "
                "replica",
                field="hardware.num_gpus",
            )
        if self.gpu_memory_bytes is not None:
            check_int(self.gpu_memory_bytes, "hardware.gpu_memory_bytes", 1)


def kv_bytes_per_token(
    num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int
) -> int:
    """``2 (K and V) * num_layers * num_kv_heads * head_dim * dtype_bytes``."""
    for name, value in (
        ("model.num_layers", num_layers),
        ("model.num_kv_heads", num_kv_heads),
        ("model.head_dim", head_dim),
        ("model.dtype_bytes", dtype_bytes),
    ):
        check_int(value, name, 1)
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def kv_capacity_tokens(
    *,
    num_gpus: int,
    gpu_memory_bytes: int,
    memory_utilization: float,
    weight_bytes: int,
    activation_reserve_bytes: int,
    kv_bytes_per_token: int,
) -> int:
    """KV capacity of one replica in tokens (module docstring, "KV capacity").

    ``floor((num_gpus * gpu_memory_bytes * memory_utilization - weight_bytes -
    activation_reserve_bytes) / kv_bytes_per_token)``.

    Raises
    ------
    InputError
        If the utilisation is outside (0, 1] or nothing is left for the KV cache.
    """
    utilisation = check_number(memory_utilization, "kv.memory_utilization")
    if not 0 < utilisation <= 1:
        raise InputError(
            f"got {utilisation}; expected a fraction in (0, 1]",
            field="kv.memory_utilization",
        )
    check_int(weight_bytes, "kv.weight_bytes", 0)
    check_int(activation_reserve_bytes, "kv.activation_reserve_bytes", 0)
    usable = num_gpus * gpu_memory_bytes * utilisation
    free = usable - weight_bytes - activation_reserve_bytes
    tokens = math.floor(free / kv_bytes_per_token)
    if tokens < 1:
        raise InputError(
            f"weights ({weight_bytes} B) and activations ({activation_reserve_bytes} "
            f"B) leave {free:.0f} B of {usable:.0f} B usable; expected room for at "
            "least one KV token",
            field="kv.capacity_tokens",
        )
    return tokens


@dataclass(frozen=True)
class DeploymentProfile:
    """A served LLM on given hardware: cost model, KV memory and engine limits.

    Parameters
    ----------
    name, description
        Short name (the TOML file's stem) and one line for humans.
    iteration_time
        The cost model.
    kv_bytes_per_token
        KV-cache bytes per token (all layers, K and V).
    kv_capacity_tokens
        KV tokens one replica can hold (>= 1).
    block_tokens
        KV block size in tokens (1 for OR instances, 16 for vLLM).
    max_num_seqs
        Most requests in one batch.
    max_num_batched_tokens
        Most prefill tokens + decode steps in one batch.
    max_model_len
        Longest request (prompt + output tokens) the engine accepts.
    replicas
        Identical replicas C >= 1.
    hardware
        What one replica runs on.
    sources
        Where each figure comes from: key (a field name or topic) -> citation.
    fit_mape
        Mean absolute percentage error of the fitted cost model on its
        measurements, as a fraction (0.05 = 5 %), or ``None`` when not fitted.
    host
        The replica's host-memory tier (:class:`lsched.tiers.HostTier`: swap
        space and PCIe bandwidths); ``None`` gives :meth:`HostTier.default`
        (vLLM's 4 GiB per GPU, 25 GB/s each way).
    path
        The TOML file the profile was read from, if any (not compared).

    Raises
    ------
    InputError
        On any value outside its domain, naming the field.
    """

    name: str
    description: str
    iteration_time: IterationTime
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    block_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    replicas: int
    hardware: Hardware
    sources: Mapping[str, str] = field(default_factory=dict)
    fit_mape: float | None = None
    host: HostTier | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"got {self.name!r}; expected a non-empty name",
                             field="name")  # fmt: skip
        if not isinstance(self.description, str):
            raise InputError(
                f"got {type(self.description).__name__}; expected a string",
                field="description",
            )
        if not isinstance(self.iteration_time, IterationTime):
            raise InputError(
                f"got {type(self.iteration_time).__name__}; expected IterationTime",
                field="iteration_time",
            )
        if not isinstance(self.hardware, Hardware):
            raise InputError(
                f"got {type(self.hardware).__name__}; expected Hardware",
                field="hardware",
            )
        for name in (
            "kv_bytes_per_token",
            "kv_capacity_tokens",
            "block_tokens",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "replicas",
        ):
            object.__setattr__(self, name, check_int(getattr(self, name), name, 1))
        if self.host is None:
            object.__setattr__(self, "host", HostTier.default(self.hardware.num_gpus))
        elif not isinstance(self.host, HostTier):
            raise InputError(
                f"got {type(self.host).__name__}; expected HostTier", field="host"
            )
        self.iteration_time.check_positive(self.max_model_len)
        if self.kv_capacity_tokens < self.block_tokens:
            raise InputError(
                f"got {self.kv_capacity_tokens}; expected at least one block "
                f"({self.block_tokens} tokens)",
                field="kv_capacity_tokens",
            )
        if self.fit_mape is not None:
            mape = check_number(self.fit_mape, "fit_mape")
            if mape < 0:
                raise InputError(f"got {mape}; expected >= 0", field="fit_mape")
            object.__setattr__(self, "fit_mape", mape)
        sources = dict(self.sources)
        for key, value in sources.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InputError(
                    f"got {key!r} = {value!r}; expected text keys and values",
                    field="sources",
                )
        object.__setattr__(self, "sources", MappingProxyType(sources))

    def __reduce__(self) -> Any:
        """Pickle (process pools, Dask) as the fields (:mod:`lsched._pickle`)."""
        return reduce_record(self)

    def iteration_time_s(self, phi: npt.ArrayLike) -> FloatArray:
        """Seconds per batch for phi of shape ``(..., 6)``."""
        return self.iteration_time(phi)

    def kv_blocks(self, tokens: npt.ArrayLike) -> IntArray:
        """Blocks needed to hold ``tokens`` KV tokens: ``ceil(tokens / block)``."""
        array = np.asarray(tokens, dtype=np.int64)
        return -(-array // self.block_tokens)

    @property
    def kv_capacity_blocks(self) -> int:
        """Whole blocks that fit in the capacity: ``floor(capacity / block)``."""
        return self.kv_capacity_tokens // self.block_tokens

    @property
    def host_capacity_blocks(self) -> int:
        """Whole KV blocks that fit in the host tier's memory."""
        assert self.host is not None  # set in __post_init__
        return self.host.capacity_blocks(self.block_tokens, self.kv_bytes_per_token)

    def replace(self, **changes: Any) -> DeploymentProfile:
        """Return a re-validated copy with some fields changed.

        Examples
        --------
        >>> unit = load_profile("unit-slot").replace(kv_capacity_tokens=40)
        >>> unit.kv_capacity_blocks
        40
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(
                f"unknown profile field(s) {sorted(unknown)}; expected some of "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """The key figures as one JSON-like dict."""
        return {
            "name": self.name,
            "description": self.description,
            "hardware": dataclasses.asdict(self.hardware),
            "replicas": self.replicas,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "kv_capacity_blocks": self.kv_capacity_blocks,
            "block_tokens": self.block_tokens,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "fit_mape": self.fit_mape,
            "host": self.host.to_dict() if self.host is not None else None,
            "iteration_time": self.iteration_time.to_dict(),
            "sources": dict(self.sources),
            "path": self.path,
        }


# -- files -----------------------------------------------------------------------


def models_dir() -> Path:
    """The folder of the shipped profiles: the checkout's ``models/`` or, in a
    wheel, the installed ``lsched_models`` package (:mod:`lsched._models`)."""
    return shipped_models_dir()


def list_profiles() -> list[str]:
    """Names of the profiles found by name, each once, sorted.

    The folders of ``$LSCHED_MODELS`` come before the shipped ones; a name in
    several folders is the first folder's profile.
    """
    return list(profile_files())


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """The text of a TOML file and its tables; InputError with the line if invalid
    (or not UTF-8)."""
    text = read_text(path, "a TOML file (UTF-8 text)")
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise InputError(
            f"not valid TOML: {exc}",
            file=path,
            line=int(match.group(1)) if match else None,
        ) from None


def load_profile(name_or_path: str | Path) -> DeploymentProfile:
    """Load a profile by name or from a ``.toml`` path.

    A name is looked up in the folders of ``$LSCHED_MODELS``, then in the shipped
    profiles (``models/<name>.toml``); see :mod:`lsched._models`.

    Raises
    ------
    InputError
        For an unknown name (listing the known ones), unreadable TOML (with its
        line) or a bad field (naming the file, the field and its line).
    """
    candidate = check_path(name_or_path, "profile")
    text_name = str(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        path = candidate
        if not path.is_file():
            raise InputError("no such profile file", file=path)
    else:
        found = find_profile(text_name)
        if found is None:
            known = ", ".join(list_profiles()) or "(none)"
            raise InputError(
                f"unknown profile {text_name!r}; known profiles: {known}",
                field="profile",
            )
        path = found
    text, data = read_toml(path)
    try:
        return _profile_from_dict(data, default_name=path.stem, path=str(path))
    except InputError as exc:
        line = _line_of(text, exc.field) if exc.line is None else exc.line
        raise exc.located(file=path, line=line) from None


# TOML schema: table -> allowed keys (checked so that typos are errors, not defaults)
_TOP_KEYS = {
    "name",
    "description",
    "block_tokens",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "replicas",
    "fit_mape",
    "hardware",
    "model",
    "kv",
    "iteration_time",
    "sources",
    "fit",
    "host",
}
_HARDWARE_KEYS = {
    "gpu",
    "num_gpus",
    "tensor_parallel",
    "pipeline_parallel",
    "gpu_memory_bytes",
    "peak_flops",
    "memory_bandwidth_bytes_per_s",
}
_MODEL_KEYS = {
    "name",
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "num_params",
    "dtype_bytes",
}
_KV_KEYS = {
    "bytes_per_token",
    "capacity_tokens",
    "memory_utilization",
    "weight_bytes",
    "activation_reserve_bytes",
}
_IT_KEYS = {
    "switch_feature",
    "thresholds",
    "overhead_s",
    "overhead_per_token_s",
    "overhead_tokens",
    "pieces",
    "regimes",
}


def _table(data: Mapping[str, Any], key: str, *, required: bool) -> dict[str, Any]:
    if key not in data:
        if required:
            raise InputError(f"missing table [{key}]", field=key)
        return {}
    value = data[key]
    if not isinstance(value, dict):
        raise InputError(
            f"got {type(value).__name__}; expected a table [{key}]", field=key
        )
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(
            f"unknown key {unknown[0]!r}; expected some of "
            f"{', '.join(sorted(allowed))}",
            field=f"{prefix}{unknown[0]}",
        )


def _get(
    table: Mapping[str, Any], key: str, kind: type, prefix: str, default: Any = ...
) -> Any:
    name = f"{prefix}{key}"
    if key not in table:
        if default is ...:
            raise InputError("missing required field", field=name)
        return default
    value = table[key]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    else:
        ok = isinstance(value, kind)
        expected = "a string" if kind is str else kind.__name__
    if not ok:
        raise InputError(
            f"got {type(value).__name__} {value!r}; expected {expected}", field=name
        )
    return float(value) if kind is float else value


def _pieces(raw: Any, name: str) -> FloatArray:
    if not isinstance(raw, list) or not raw:
        raise InputError(
            "expected a non-empty array of pieces, each a table of feature = "
            "seconds per unit",
            field=name,
        )
    weights = np.zeros((len(raw), NUM_FEATURES), dtype=np.float64)
    for p, piece in enumerate(raw):
        if not isinstance(piece, dict):
            raise InputError(
                f"got {type(piece).__name__}; expected a table of feature = weight",
                field=f"{name}[{p}]",
            )
        for feature in piece:
            if feature not in FEATURES:
                raise InputError(
                    f"unknown feature {feature!r}; expected one of "
                    f"{', '.join(FEATURES)}",
                    field=f"{name}[{p}].{feature}",
                )
            weights[p, FEATURES.index(feature)] = _get(
                piece, feature, float, f"{name}[{p}]."
            )
    return weights


def _iteration_time_from_dict(table: Mapping[str, Any]) -> IterationTime:
    prefix = "iteration_time."
    _check_keys(table, _IT_KEYS, prefix)
    if ("pieces" in table) == ("regimes" in table):
        raise InputError(
            "give either pieces (one regime) or [[iteration_time.regimes]], "
            "exactly one of them",
            field="iteration_time.pieces",
        )
    if "pieces" in table:
        regimes = [_pieces(table["pieces"], "iteration_time.pieces")]
    else:
        raw = table["regimes"]
        if not isinstance(raw, list) or not raw:
            raise InputError(
                "expected an array of tables [[iteration_time.regimes]]",
                field="iteration_time.regimes",
            )
        regimes = []
        for r, regime in enumerate(raw):
            name = f"iteration_time.regimes[{r}]"
            if not isinstance(regime, dict):
                raise InputError("expected a table with pieces", field=name)
            _check_keys(regime, {"pieces", "note"}, f"{name}.")
            if "pieces" not in regime:
                raise InputError("missing required field", field=f"{name}.pieces")
            regimes.append(_pieces(regime["pieces"], f"{name}.pieces"))
    thresholds = _get(table, "thresholds", list, prefix, default=[])
    return IterationTime(
        regimes=tuple(regimes),
        switch_feature=_get(table, "switch_feature", str, prefix, default=None),
        thresholds=tuple(thresholds),
        overhead_s=_get(table, "overhead_s", float, prefix, default=0.0),
        overhead_per_token_s=_get(
            table, "overhead_per_token_s", float, prefix, default=0.0
        ),
        overhead_tokens=_get(table, "overhead_tokens", str, prefix, default="context"),
    )


def _profile_from_dict(
    data: Mapping[str, Any], *, default_name: str, path: str | None
) -> DeploymentProfile:
    _check_keys(data, _TOP_KEYS, "")
    hw_table = _table(data, "hardware", required=True)
    _check_keys(hw_table, _HARDWARE_KEYS, "hardware.")
    tp = _get(hw_table, "tensor_parallel", int, "hardware.", default=1)
    pp = _get(hw_table, "pipeline_parallel", int, "hardware.", default=1)
    hardware = Hardware(
        gpu=_get(hw_table, "gpu", str, "hardware."),
        num_gpus=_get(hw_table, "num_gpus", int, "hardware.", default=tp * pp),
        tensor_parallel=tp,
        pipeline_parallel=pp,
        gpu_memory_bytes=_get(
            hw_table, "gpu_memory_bytes", int, "hardware.", default=None
        ),
    )
    model = _table(data, "model", required=False)
    _check_keys(model, _MODEL_KEYS, "model.")
    kv = _table(data, "kv", required=True)
    _check_keys(kv, _KV_KEYS, "kv.")

    # KV bytes per token: given, derived from the architecture, or both (must agree)
    arch = ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes")
    derived_bytes = None
    if all(k in model for k in arch):
        derived_bytes = kv_bytes_per_token(
            *(_get(model, k, int, "model.") for k in arch)
        )
    given_bytes = _get(kv, "bytes_per_token", int, "kv.", default=None)
    if given_bytes is None and derived_bytes is None:
        raise InputError(
            "missing required field (or give model.num_layers, num_kv_heads, "
            "head_dim and dtype_bytes to derive it)",
            field="kv.bytes_per_token",
        )
    if given_bytes is not None and derived_bytes not in (None, given_bytes):
        raise InputError(
            f"got {given_bytes}; the [model] architecture gives "
            f"2 * layers * kv_heads * head_dim * dtype_bytes = {derived_bytes}",
            field="kv.bytes_per_token",
        )
    bytes_per_token = given_bytes if given_bytes is not None else derived_bytes
    assert bytes_per_token is not None
    check_int(bytes_per_token, "kv.bytes_per_token", 1)

    # KV capacity: given (measured), or derived from memory (formula in the docstring)
    memory_keys = ("memory_utilization", "weight_bytes", "activation_reserve_bytes")
    if "capacity_tokens" in kv:
        if any(k in kv for k in memory_keys):
            raise InputError(
                "give capacity_tokens or the memory terms (memory_utilization, "
                "weight_bytes, activation_reserve_bytes), not both",
                field="kv.capacity_tokens",
            )
        capacity = _get(kv, "capacity_tokens", int, "kv.")
        if capacity < 1:
            raise InputError(
                f"got {capacity}; expected a positive number of tokens",
                field="kv.capacity_tokens",
            )
    else:
        if hardware.gpu_memory_bytes is None:
            raise InputError(
                "missing required field: deriving kv capacity needs the memory of "
                "one accelerator (or give kv.capacity_tokens)",
                field="hardware.gpu_memory_bytes",
            )
        capacity = kv_capacity_tokens(
            num_gpus=hardware.num_gpus,
            gpu_memory_bytes=hardware.gpu_memory_bytes,
            memory_utilization=_get(kv, "memory_utilization", float, "kv."),
            weight_bytes=_get(kv, "weight_bytes", int, "kv."),
            activation_reserve_bytes=_get(
                kv, "activation_reserve_bytes", int, "kv.", default=0
            ),
            kv_bytes_per_token=bytes_per_token,
        )

    it_table = _table(data, "iteration_time", required=True)
    iteration_time = _iteration_time_from_dict(it_table)

    sources = _table(data, "sources", required=False)
    for key, value in sources.items():
        if not isinstance(value, str):
            raise InputError(
                f"got {type(value).__name__}; expected a citation string",
                field=f"sources.{key}",
            )
    fit_mape = _get(data, "fit_mape", float, "", default=None)
    return DeploymentProfile(
        host=_host_from_dict(data, hardware),
        name=_get(data, "name", str, "", default=default_name),
        description=_get(data, "description", str, ""),
        iteration_time=iteration_time,
        kv_bytes_per_token=bytes_per_token,
        kv_capacity_tokens=capacity,
        block_tokens=_get(data, "block_tokens", int, ""),
        max_num_seqs=_get(data, "max_num_seqs", int, ""),
        max_num_batched_tokens=_get(data, "max_num_batched_tokens", int, ""),
        max_model_len=_get(data, "max_model_len", int, ""),
        replicas=_get(data, "replicas", int, "", default=1),
        hardware=hardware,
        sources=sources,
        fit_mape=fit_mape,
        path=path,
    )


def _host_from_dict(data: Mapping[str, Any], hardware: Hardware) -> HostTier | None:
    """The ``[host]`` table (``None`` without one: the default tier)."""
    if "host" not in data:
        return None
    return host_from_table(data["host"], HostTier.default(hardware.num_gpus))


def _line_of(text: str, dotted: str | None) -> int | None:
    """Best-effort 1-based line of a field ``table.key`` (indices ignored)."""
    if not dotted:
        return None
    parts = re.sub(r"\[\d+\]", "", dotted).split(".")
    lines = text.splitlines()
    # try the key (or, for a piece's feature, the feature name) inside its table
    for depth in range(len(parts) - 1, -1, -1):
        table, key = ".".join(parts[:depth]), parts[-1]
        current = ""
        for number, line in enumerate(lines, start=1):
            header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
            if header:
                current = header.group(1)
                continue
            if current.startswith(table) and re.search(
                rf"(^|[\s{{,]){re.escape(key)}\s*=", line
            ):
                return number
    # a missing table or field: point at its table header, if any
    for number, line in enumerate(lines, start=1):
        if re.match(rf"\s*\[\[?\s*{re.escape(parts[0])}\s*\]\]?", line):
            return number
    return None


# -- writing ---------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest repr that round-trips the double exactly
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _pieces_toml(weights: FloatArray) -> str:
    rows = []
    for piece in weights:
        items = ", ".join(
            f"{f} = {_toml_value(float(w))}"
            for f, w in zip(FEATURES, piece, strict=True)
            if w != 0.0
        )
        rows.append(f"  {{ {items or 'const = 0.0'} }},")
    return "pieces = [\n" + "\n".join(rows) + "\n]\n"


def iteration_time_toml(it: IterationTime) -> str:
    """The ``[iteration_time]`` table of a profile TOML for ``it`` (exact floats)."""
    out = ["[iteration_time]\n"]
    if it.switch_feature is not None:
        out.append(f"switch_feature = {_toml_value(it.switch_feature)}\n")
        out.append(f"thresholds = {_toml_value(list(it.thresholds))}\n")
    out.append(f"overhead_s = {_toml_value(it.overhead_s)}\n")
    out.append(f"overhead_per_token_s = {_toml_value(it.overhead_per_token_s)}\n")
    out.append(f"overhead_tokens = {_toml_value(it.overhead_tokens)}\n")
    if it.num_regimes == 1:
        out.append(_pieces_toml(it.regimes[0]))
    else:
        for weights in it.regimes:
            out.append("\n[[iteration_time.regimes]]\n")
            out.append(_pieces_toml(weights))
    return "".join(out)


def profile_to_toml(profile: DeploymentProfile, *, header: str = "") -> str:
    """A TOML text that :func:`load_profile` reads back into an equal profile.

    The KV capacity is written as given (``kv.capacity_tokens``); ``header`` is
    prepended as ``#`` comment lines.
    """
    hw = profile.hardware
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [
        f"name = {_toml_value(profile.name)}",
        f"description = {_toml_value(profile.description)}",
        f"block_tokens = {profile.block_tokens}",
        f"max_num_seqs = {profile.max_num_seqs}",
        f"max_num_batched_tokens = {profile.max_num_batched_tokens}",
        f"max_model_len = {profile.max_model_len}",
        f"replicas = {profile.replicas}",
    ]
    if profile.fit_mape is not None:
        lines.append(f"fit_mape = {_toml_value(profile.fit_mape)}")
    lines += [
        "",
        "[hardware]",
        f"gpu = {_toml_value(hw.gpu)}",
        f"num_gpus = {hw.num_gpus}",
        f"tensor_parallel = {hw.tensor_parallel}",
        f"pipeline_parallel = {hw.pipeline_parallel}",
    ]
    if hw.gpu_memory_bytes is not None:
        lines.append(f"gpu_memory_bytes = {hw.gpu_memory_bytes}")
    lines += [
        "",
        "[kv]",
        f"bytes_per_token = {profile.kv_bytes_per_token}",
        f"capacity_tokens = {profile.kv_capacity_tokens}",
        "",
        iteration_time_toml(profile.iteration_time).rstrip("\n"),
        "",
    ]
    if profile.host != HostTier.default(hw.num_gpus):
        assert profile.host is not None
        lines += ["[host]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in profile.host.to_dict().items()]
        lines += [""]
    lines += [
        "[sources]",
    ]
    lines += [
        f"{_toml_value(k)} = {_toml_value(v)}" for k, v in profile.sources.items()
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "FEATURES",
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
]
