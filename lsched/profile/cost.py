"""The iteration-time cost model: batch features phi and :class:`IterationTime`.

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
                    + adapter_s * A + lora_token_s * L

Inside a regime the time is a convex max of affine pieces (a roofline, or one
linear model); a threshold regime models fits that change constants at a batch
size, and the overhead models a simulator's fixed per-iteration cost. The overhead
is affine in phi, so :attr:`IterationTime.effective_regimes` folds it into every
piece for formulations that want pure max-affine pieces.

Adapter columns (DESIGN.md, "Cost features"; :mod:`lsched.adapters`): a batch
with LoRA adapters also has ``A``, its distinct adapters, and ``L``, its LoRA
tokens (prefill chunk tokens and decode steps of requests with an adapter).
Their weights ``adapter_s`` and ``lora_token_s`` default to 0, so a profile
without them is unchanged; they are the same in every piece and regime, and
``max_p (w_p . phi) + u . (A, L) = max_p (w_p . phi + u . (A, L))``: the time
stays a convex piecewise-affine function of ``(phi, A, L)`` in each regime.
The engine adds them only on a replica that serves adapters
(:mod:`lsched.evaluator.adapters`); elsewhere ``A = L = 0``. A *merged* batch
(dLoRA: one adapter folded into the base weights, :class:`lsched.policies.Batch`)
runs at the base model's speed: ``A = L = 0``. ``merge_switch_s`` (default 0)
is charged once to the first iteration after the replica changes between
unmerged execution and merging an adapter, or between merged adapters (dLoRA's
``switch_cost``): a constant per switch, outside phi.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.checks import check_number
from lsched.errors import InputError

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
    adapter_s, lora_token_s
        Seconds per distinct adapter and per LoRA token of a batch (>= 0; the
        adapter columns of the module docstring).
    merge_switch_s
        Seconds a switch between unmerged and merged execution takes (>= 0;
        module docstring).

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
    adapter_s: float = 0.0
    lora_token_s: float = 0.0
    merge_switch_s: float = 0.0

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
        for name in (
            "overhead_s", "overhead_per_token_s", "adapter_s", "lora_token_s",
            "merge_switch_s",
        ):  # fmt: skip
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
        } | self.adapter_weights

    @property
    def adapter_weights(self) -> dict[str, float]:
        """The nonzero adapter costs (the adapter columns' weights and the merge
        switch), by name (none: ``{}``)."""
        pairs = (
            ("adapter_s", self.adapter_s),
            ("lora_token_s", self.lora_token_s),
            ("merge_switch_s", self.merge_switch_s),
        )
        return {k: v for k, v in pairs if v}

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
            and self.adapter_weights == other.adapter_weights
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays
