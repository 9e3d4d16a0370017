"""The profile TOML format: reading files, parsing tables, writing profiles.

The tables and keys are documented in ``models/README.md``; unknown keys are
errors, not defaults, and each error names its field (``kv.capacity_tokens``),
which :func:`_line_of` turns into a line of the file. :func:`profile_to_toml`
writes a profile back exactly (floats as their shortest round-tripping repr).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lsched.checks import check_int, read_text
from lsched.errors import InputError
from lsched.profile.cost import FEATURES, NUM_FEATURES, FloatArray, IterationTime
from lsched.profile.deployment import DeploymentProfile
from lsched.profile.hardware import Hardware, kv_bytes_per_token, kv_capacity_tokens
from lsched.tiers import HostTier, host_from_table


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
    "adapter_s",
    "lora_token_s",
    "merge_switch_s",
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
        adapter_s=_get(table, "adapter_s", float, prefix, default=0.0),
        lora_token_s=_get(table, "lora_token_s", float, prefix, default=0.0),
        merge_switch_s=_get(table, "merge_switch_s", float, prefix, default=0.0),
    )


def _profile_from_dict(
    data: Mapping[str, Any], *, default_name: str, path: str | None
) -> DeploymentProfile:
    """The profile a TOML file's tables describe; InputError names the field."""
    _check_keys(data, _TOP_KEYS, "")
    hardware = _hardware_from_dict(data)
    model = _table(data, "model", required=False)
    _check_keys(model, _MODEL_KEYS, "model.")
    kv = _table(data, "kv", required=True)
    _check_keys(kv, _KV_KEYS, "kv.")
    bytes_per_token = _kv_bytes_per_token_from_dict(model, kv)
    capacity = _kv_capacity_from_dict(kv, hardware, bytes_per_token)
    it_table = _table(data, "iteration_time", required=True)
    iteration_time = _iteration_time_from_dict(it_table)
    sources = _sources_from_dict(data)
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


def _hardware_from_dict(data: Mapping[str, Any]) -> Hardware:
    """The ``[hardware]`` table (``num_gpus`` defaults to tp * pp)."""
    hw_table = _table(data, "hardware", required=True)
    _check_keys(hw_table, _HARDWARE_KEYS, "hardware.")
    tp = _get(hw_table, "tensor_parallel", int, "hardware.", default=1)
    pp = _get(hw_table, "pipeline_parallel", int, "hardware.", default=1)
    return Hardware(
        gpu=_get(hw_table, "gpu", str, "hardware."),
        num_gpus=_get(hw_table, "num_gpus", int, "hardware.", default=tp * pp),
        tensor_parallel=tp,
        pipeline_parallel=pp,
        gpu_memory_bytes=_get(
            hw_table, "gpu_memory_bytes", int, "hardware.", default=None
        ),
    )


def _kv_bytes_per_token_from_dict(
    model: Mapping[str, Any], kv: Mapping[str, Any]
) -> int:
    """KV bytes per token: given, derived from the architecture, or both (must
    agree)."""
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
    return bytes_per_token


def _kv_capacity_from_dict(
    kv: Mapping[str, Any], hardware: Hardware, bytes_per_token: int
) -> int:
    """KV capacity in tokens: given (measured), or derived from memory
    (:func:`~lsched.profile.hardware.kv_capacity_tokens`)."""
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
        return capacity
    if hardware.gpu_memory_bytes is None:
        raise InputError(
            "missing required field: deriving kv capacity needs the memory of "
            "one accelerator (or give kv.capacity_tokens)",
            field="hardware.gpu_memory_bytes",
        )
    return kv_capacity_tokens(
        num_gpus=hardware.num_gpus,
        gpu_memory_bytes=hardware.gpu_memory_bytes,
        memory_utilization=_get(kv, "memory_utilization", float, "kv."),
        weight_bytes=_get(kv, "weight_bytes", int, "kv."),
        activation_reserve_bytes=_get(
            kv, "activation_reserve_bytes", int, "kv.", default=0
        ),
        kv_bytes_per_token=bytes_per_token,
    )


def _sources_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[sources]`` table: key -> citation string."""
    sources = _table(data, "sources", required=False)
    for key, value in sources.items():
        if not isinstance(value, str):
            raise InputError(
                f"got {type(value).__name__}; expected a citation string",
                field=f"sources.{key}",
            )
    return sources


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
    for key, value in it.adapter_weights.items():  # written only where nonzero
        out.append(f"{key} = {_toml_value(value)}\n")
    if it.num_regimes == 1:
        out.append(_pieces_toml(it.regimes[0]))
    else:
        for weights in it.regimes:
            out.append("\n[[iteration_time.regimes]]\n")
            out.append(_pieces_toml(weights))
    return "".join(out)


def profile_to_toml(profile: DeploymentProfile, *, header: str = "") -> str:
    """A TOML text that :func:`~lsched.profile.load_profile` reads back into an
    equal profile.

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
