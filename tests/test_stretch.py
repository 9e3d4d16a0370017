"""Closed-form decode-stretch sums against direct summation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsched.evaluator.stretch import DecodeStretch

weights = st.lists(
    st.tuples(
        st.floats(1e-4, 1.0),  # const
        st.floats(0.0, 1e-3),  # decode_steps
        st.floats(0.0, 1e-5),  # kv_read_tokens
    ),
    min_size=1,
    max_size=4,
)


def as_pieces(rows: list[tuple[float, float, float]]) -> np.ndarray:
    w = np.zeros((len(rows), 6))
    for p, (const, per_step, per_kv) in enumerate(rows):
        w[p, [0, 3, 4]] = const, per_step, per_kv
    return w


def direct(w: np.ndarray, d: int, k0: int, n: int) -> np.ndarray:
    """dt_k = max_p w_p . phi_k for k < n, one iteration at a time."""
    out = []
    for k in range(n):
        phi = np.array([1.0, 0, 0, d, k0 + k * d, 0])
        out.append(float(np.max(w @ phi)))
    return np.array(out)


@settings(max_examples=200, deadline=None)
@given(rows=weights, d=st.integers(1, 300), k0=st.integers(1, 10**6),
       n=st.integers(0, 400))  # fmt: skip
def test_elapsed_and_kv_match_direct_sums(rows, d, k0, n) -> None:
    w = as_pieces(rows)
    stretch = DecodeStretch(w, d, k0)
    dt = direct(w, d, k0, n)
    assert stretch.elapsed_s(n) == pytest.approx(dt.sum(), rel=1e-10, abs=1e-12)
    kv = (1000 + 3 * np.arange(n)) * dt
    assert stretch.kv_token_seconds(n, 1000, 3) == pytest.approx(
        kv.sum(), rel=1e-10, abs=1e-12
    )


def test_crossing_pieces_use_the_envelope() -> None:
    # flat piece 1.0 s vs steep piece 0.1 + 0.1 k (D = 1, K0 = 1): the steep one
    # takes over at k = 9 (0.1 + 0.1 * 9 = 1.0), so dt = 1, ..., 1, 1.0, 1.1, 1.2
    w = np.zeros((2, 6))
    w[0, 0] = 1.0
    w[1, 0], w[1, 4] = 0.0, 0.1  # 0.1 * K_k = 0.1 * (1 + k)
    stretch = DecodeStretch(w, 1, 1)
    assert stretch.elapsed_s(12) == pytest.approx(10 * 1.0 + 1.1 + 1.2)


def test_iterations_until_finds_the_first_boundary_at_or_after() -> None:
    w = np.zeros((1, 6))
    w[0, 0] = 0.5  # every iteration 0.5 s
    stretch = DecodeStretch(w, 4, 10)
    assert stretch.iterations_until(1.0, 100) == 2  # boundary exactly at 1.0
    assert stretch.iterations_until(1.01, 100) == 3
    assert stretch.iterations_until(1e9, 100) == 100  # capped
