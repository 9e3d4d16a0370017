"""Requests and instances: the data every engine of lsched reads.

An :class:`Instance` is an immutable table of ``n >= 1`` requests in arrival order,
stored as read-only NumPy columns (struct of arrays):

=========================  ========  ===============================================
column                     dtype     meaning
=========================  ========  ===============================================
``arrival_s``              float64   arrival time a_i in seconds, finite, >= 0,
                                     non-decreasing
``prompt_tokens``          int64     prompt length s_i >= 1
``output_tokens``          int64     output length o_i >= 1 (true, hidden from
                                     online policies except through an oracle)
``predicted_output_tokens`` int64    optional prediction of o_i, >= 1
``tenant``                 str       optional tenant name (fair-sharing policies)
``adapter``                str       optional LoRA adapter name; ``""``: the base
                                     model (:mod:`lsched.adapters`)
``priority``               int64     optional priority, smaller is more urgent
``ttft_deadline_s``        float64   optional TTFT SLO in seconds after arrival, > 0
``tpot_deadline_s``        float64   optional TPOT SLO in seconds per token, > 0
``prefix_hashes``          ragged    optional prefix block hashes (Mooncake), kept
                                     as CSR: ``prefix_hash_offsets`` (n + 1) and
                                     ``prefix_hash_values``
=========================  ========  ===============================================

Request ``i`` is row ``i``; ids are positions, so there is no global id counter.
Validation happens once, in the constructor; every error names the column, the row
and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched._pickle import reduce_record
from lsched.checks import check_optional_int, check_type
from lsched.errors import InputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Optional per-request columns: name -> NumPy dtype ("U" for strings).
OPTIONAL_COLUMNS: dict[str, str] = {
    "predicted_output_tokens": "int64",
    "tenant": "U",
    "adapter": "U",
    "priority": "int64",
    "ttft_deadline_s": "float64",
    "tpot_deadline_s": "float64",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One request, as a row of an :class:`Instance` (a view for humans and tests)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    predicted_output_tokens: int | None = None
    tenant: str | None = None
    adapter: str | None = None
    priority: int | None = None
    ttft_deadline_s: float | None = None
    tpot_deadline_s: float | None = None
    prefix_hashes: tuple[int, ...] | None = None


def _frozen(values: Any, dtype: str, name: str) -> np.ndarray:
    """``values`` as a read-only 1-D column of ``dtype``.

    Numbers stay numbers: an int64 column takes integers (floats only where they
    are whole: 2.7 is refused, not cut to 2), a float64 column takes real
    numbers; ``bool`` and text are refused in both.
    """
    try:
        array = np.asarray(values) if dtype != "U" else np.array(values, dtype=str)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"cannot convert to {dtype}: {exc}", field=name) from None
    if array.ndim != 1:
        raise InputError(f"expected a 1-D column, got shape {array.shape}", field=name)
    if dtype != "U":
        array = _numeric(array, dtype, name)
    array.flags.writeable = False
    return array


def _numeric(array: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """``array`` cast to ``dtype`` ("int64" or "float64") without changing a value."""
    integer = dtype == "int64"
    expected = "an integer" if integer else "a number"
    kind = array.dtype.kind
    if kind == "O":  # Python objects: numbers only, of the right kind
        wrong = [
            isinstance(v, bool | np.bool_)
            or not isinstance(v, Integral if integer else Real)
            for v in array
        ]
        if any(wrong):
            i = wrong.index(True)
            raise InputError(
                f"request {i}: got {type(array[i]).__name__} {array[i]!r}; expected "
                f"{expected}",
                field=name,
            )
        try:
            return np.array(array.tolist(), dtype=dtype).reshape(len(array))
        except OverflowError:
            raise InputError(
                f"got a value outside int64; expected {expected}", field=name
            ) from None
    if len(array) == 0:
        return array.astype(dtype)
    if kind not in "iuf":
        first = array[0].item()
        raise InputError(
            f"request 0: got {type(first).__name__} {first!r}; expected {expected}",
            field=name,
        )
    if integer and kind == "f":
        whole = np.isfinite(array) & (array == np.round(array))
        if not whole.all():
            i = _first_bad(~whole)
            raise InputError(
                f"request {i}: got {array[i]}; expected {expected}", field=name
            )
    if integer and kind == "u" and len(array) and array.max() > np.iinfo(np.int64).max:
        i = _first_bad(array > np.iinfo(np.int64).max)
        raise InputError(
            f"request {i}: got {array[i]}; expected {expected} below 2**63", field=name
        )
    return array.astype(dtype)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True, eq=False)
class Instance:
    """An immutable, validated set of requests in arrival order.

    Parameters
    ----------
    arrival_s, prompt_tokens, output_tokens
        Required columns, one entry per request.
    predicted_output_tokens, tenant, adapter, priority, ttft_deadline_s, tpot_deadline_s
        Optional columns (``None`` when absent).
    prefix_hash_offsets, prefix_hash_values
        Optional CSR encoding of each request's prefix block hashes: request ``i``
        has ``prefix_hash_values[offsets[i]:offsets[i + 1]]``.
    name
        A short name for tables and file names.
    source
        Where the requests came from (a file path), if anywhere.
    family, seed
        Generator family and seed for generated instances.
    params
        Further metadata (generator parameters, reader options, ...); JSON-like
        values only, so that it survives a round trip through CSV and Parquet.

    Raises
    ------
    InputError
        If a column has the wrong length or a value outside its domain; the
        message names the column and the first offending row.
    """

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    predicted_output_tokens: IntArray | None = None
    tenant: npt.NDArray[np.str_] | None = None
    adapter: npt.NDArray[np.str_] | None = None
    priority: IntArray | None = None
    ttft_deadline_s: FloatArray | None = None
    tpot_deadline_s: FloatArray | None = None
    prefix_hash_offsets: IntArray | None = None
    prefix_hash_values: IntArray | None = None
    name: str = "instance"
    source: str | None = None
    family: str | None = None
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        set_(self, "arrival_s", _frozen(self.arrival_s, "float64", "arrival_s"))
        n = len(self.arrival_s)
        if n == 0:
            raise InputError("an instance needs at least one request")
        for name in ("prompt_tokens", "output_tokens"):
            set_(self, name, _frozen(getattr(self, name), "int64", name))
        for name, dtype in OPTIONAL_COLUMNS.items():
            if getattr(self, name) is not None:
                set_(self, name, _frozen(getattr(self, name), dtype, name))
        offsets, values = self.prefix_hash_offsets, self.prefix_hash_values
        if (offsets is None) != (values is None):
            raise InputError(
                "give both prefix_hash_offsets and prefix_hash_values, or neither",
                field="prefix_hash_offsets",
            )
        if offsets is not None:
            set_(self, "prefix_hash_offsets", _frozen(offsets, "int64", "offsets"))
            set_(self, "prefix_hash_values", _frozen(values, "int64", "values"))
        if not isinstance(self.params, Mapping):
            raise InputError(
                f"got {type(self.params).__name__}; expected a mapping", field="params"
            )
        set_(self, "params", MappingProxyType(dict(self.params)))
        check_type(self.name, "name", str, "a str")
        for key in ("source", "family"):
            check_type(getattr(self, key), key, str | type(None), "a str or None")
        set_(self, "seed", check_optional_int(self.seed, "seed"))
        self._validate(n)

    def __reduce__(self) -> Any:
        """Pickle (process pools, Dask) as the fields (:mod:`lsched._pickle`)."""
        return reduce_record(self)

    def _validate(self, n: int) -> None:
        for name in ("prompt_tokens", "output_tokens", *OPTIONAL_COLUMNS):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise InputError(
                    f"has {len(column)} entries; expected {n} (one per request)",
                    field=name,
                )
        a = self.arrival_s
        if not np.all(np.isfinite(a)):
            i = _first_bad(~np.isfinite(a))
            raise InputError(
                f"request {i}: got {a[i]}; expected a finite number", field="arrival_s"
            )
        if np.any(a < 0):
            i = _first_bad(a < 0)
            raise InputError(
                f"request {i}: got {a[i]}; expected >= 0", field="arrival_s"
            )
        if n > 1 and np.any(np.diff(a) < 0):
            i = _first_bad(np.diff(a) < 0) + 1
            raise InputError(
                f"request {i}: arrival {a[i]} is before the previous one "
                f"({a[i - 1]}); expected non-decreasing arrival times",
                field="arrival_s",
            )
        for name in ("prompt_tokens", "output_tokens", "predicted_output_tokens"):
            column = getattr(self, name)
            if column is not None and np.any(column < 1):
                i = _first_bad(column < 1)
                raise InputError(
                    f"request {i}: got {column[i]}; expected an integer >= 1",
                    field=name,
                )
        for name in ("ttft_deadline_s", "tpot_deadline_s"):
            column = getattr(self, name)
            if column is not None and not np.all(column > 0):
                i = _first_bad(~(column > 0))
                raise InputError(
                    f"request {i}: got {column[i]}; expected a number > 0 seconds",
                    field=name,
                )
        offsets = self.prefix_hash_offsets
        if offsets is not None:
            assert self.prefix_hash_values is not None
            ok = (
                len(offsets) == n + 1
                and offsets[0] == 0
                and offsets[-1] == len(self.prefix_hash_values)
                and bool(np.all(np.diff(offsets) >= 0))
            )
            if not ok:
                raise InputError(
                    "expected n + 1 non-decreasing offsets from 0 to "
                    "len(prefix_hash_values)",
                    field="prefix_hash_offsets",
                )

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_requests(cls, requests: Sequence[Request], **metadata: Any) -> Instance:
        """Build an instance from :class:`Request` rows (in arrival order)."""
        columns: dict[str, Any] = {
            name: [getattr(r, name) for r in requests]
            for name in ("arrival_s", "prompt_tokens", "output_tokens")
        }
        for name in OPTIONAL_COLUMNS:
            values = [getattr(r, name) for r in requests]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                i = present.index(False)
                raise InputError(
                    f"request {i} has no value; give it for every request or none",
                    field=name,
                )
            if any(present):
                columns[name] = values
        hashes = [r.prefix_hashes for r in requests]
        if any(h is not None for h in hashes):
            lengths = [len(h or ()) for h in hashes]
            columns["prefix_hash_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
            columns["prefix_hash_values"] = np.array(
                [v for h in hashes for v in (h or ())], dtype=np.int64
            )
        return cls(**columns, **metadata)

    def replace(self, **changes: Any) -> Instance:
        """Return a new, re-validated instance with some fields changed."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        unknown = set(changes) - set(fields)
        if unknown:
            raise InputError(f"unknown instance field(s) {sorted(unknown)}")
        fields.update(changes)
        return Instance(**fields)

    def subset(self, index: npt.ArrayLike) -> Instance:
        """Return the requests at ``index`` (a boolean mask or sorted positions)."""
        rows = np.arange(len(self))[np.asarray(index)]
        columns: dict[str, Any] = {}
        for name in ("arrival_s", "prompt_tokens", "output_tokens", *OPTIONAL_COLUMNS):
            column = getattr(self, name)
            columns[name] = None if column is None else column[rows]
        if self.prefix_hash_offsets is not None:
            assert self.prefix_hash_values is not None
            starts = self.prefix_hash_offsets[rows]
            lengths = self.prefix_hash_offsets[rows + 1] - starts
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            # gather every selected slice at once: position k of row r reads
            # values[starts[r] + k]
            within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
            columns["prefix_hash_offsets"] = offsets
            columns["prefix_hash_values"] = self.prefix_hash_values[
                np.repeat(starts, lengths) + within
            ]
        return self.replace(**columns)

    # -- access -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def num_requests(self) -> int:
        return len(self)

    def prefix_hashes(self, i: int) -> IntArray | None:
        """Prefix block hashes of request ``i``, or ``None`` if the trace has none."""
        if self.prefix_hash_offsets is None or self.prefix_hash_values is None:
            return None
        lo, hi = self.prefix_hash_offsets[i], self.prefix_hash_offsets[i + 1]
        return self.prefix_hash_values[lo:hi]

    def __getitem__(self, i: int) -> Request:
        if not -len(self) <= i < len(self):
            raise IndexError(f"request {i} out of range for {len(self)} requests")
        i %= len(self)
        optional = {
            name: None if (column := getattr(self, name)) is None else column[i].item()
            for name in OPTIONAL_COLUMNS
        }
        hashes = self.prefix_hashes(i)
        return Request(
            arrival_s=float(self.arrival_s[i]),
            prompt_tokens=int(self.prompt_tokens[i]),
            output_tokens=int(self.output_tokens[i]),
            prefix_hashes=None if hashes is None else tuple(hashes.tolist()),
            **optional,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The per-request columns that are present, by name (prefix hashes aside)."""
        names = ("arrival_s", "prompt_tokens", "output_tokens", *OPTIONAL_COLUMNS)
        return {n: c for n in names if (c := getattr(self, n)) is not None}

    @property
    def metadata(self) -> dict[str, Any]:
        """Name, source, family, seed and params as one JSON-like dict."""
        return {
            "name": self.name,
            "source": self.source,
            "family": self.family,
            "seed": self.seed,
            "params": dict(self.params),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        if self.metadata != other.metadata:
            return False
        for name in ("prefix_hash_offsets", "prefix_hash_values", *self.columns()):
            mine, theirs = getattr(self, name), getattr(other, name)
            if (mine is None) != (theirs is None):
                return False
            if mine is not None and not np.array_equal(mine, theirs):
                return False
        return set(self.columns()) == set(other.columns())

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: no hashing

    def __repr__(self) -> str:
        extra = sorted(
            set(self.columns()) - {"arrival_s", "prompt_tokens", "output_tokens"}
        )
        return f"Instance(name={self.name!r}, n={len(self)}, optional={extra})"
