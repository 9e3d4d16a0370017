"""Instance: validation messages, immutability, replace/subset, Request rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lsched import InputError, Instance, Request


def small() -> Instance:
    return Instance.from_requests(
        [
            Request(0.0, 3, 4, tenant="a", prefix_hashes=(7, 8)),
            Request(0.5, 2, 1, tenant="b", prefix_hashes=()),
            Request(0.5, 9, 2, tenant="a", prefix_hashes=(9,)),
        ],
        name="small",
        family="hand",
        seed=1,
    )


def test_columns_are_numpy_and_read_only() -> None:
    inst = small()
    assert inst.arrival_s.dtype == np.float64
    assert inst.prompt_tokens.dtype == np.int64
    assert inst.prompt_tokens.tolist() == [3, 2, 9]
    with pytest.raises(ValueError, match="read-only"):
        inst.output_tokens[0] = 5
    with pytest.raises(AttributeError):
        inst.name = "other"  # type: ignore[misc]


def test_constructor_copies_its_input() -> None:
    prompts = np.array([1, 2])
    inst = Instance([0.0, 1.0], prompts, [1, 1])
    prompts[0] = 99
    assert inst.prompt_tokens[0] == 1


def test_rows_round_trip_through_requests() -> None:
    inst = small()
    rows = [inst[i] for i in range(len(inst))]
    assert rows[1] == Request(0.5, 2, 1, tenant="b", prefix_hashes=())
    assert rows[-1] == inst[-1] == inst[2]
    assert Instance.from_requests(rows, **_meta(inst)) == inst
    with pytest.raises(IndexError):
        inst[3]


def _meta(inst: Instance) -> dict:
    meta = inst.metadata
    return {**meta, "params": meta["params"]}


@pytest.mark.parametrize(
    ("columns", "field", "text"),
    [
        ({"prompt_tokens": [1, 0]}, "prompt_tokens", "request 1: got 0"),
        ({"output_tokens": [-2, 1]}, "output_tokens", "request 0: got -2"),
        ({"arrival_s": [1.0, 0.5]}, "arrival_s", "expected non-decreasing"),
        ({"arrival_s": [-1.0, 0.5]}, "arrival_s", "expected >= 0"),
        ({"arrival_s": [0.0, np.nan]}, "arrival_s", "expected a finite number"),
        ({"output_tokens": [1, 2, 3]}, "output_tokens", "has 3 entries; expected 2"),
        ({"ttft_deadline_s": [1.0, 0.0]}, "ttft_deadline_s", "expected a number > 0"),
        ({"prompt_tokens": ["x", 1]}, "prompt_tokens", "request 0: got str 'x'"),
    ],
)
def test_validation_names_field_row_and_expectation(
    columns: dict, field: str, text: str
) -> None:
    base = {"arrival_s": [0.0, 1.0], "prompt_tokens": [1, 1], "output_tokens": [1, 1]}
    with pytest.raises(InputError, match=text) as info:
        Instance(**{**base, **columns})
    assert info.value.field == field
    assert f"field '{field}'" in str(info.value)


def test_empty_instance_is_rejected() -> None:
    with pytest.raises(InputError, match="at least one request"):
        Instance([], [], [])


def test_partial_optional_column_is_rejected() -> None:
    with pytest.raises(InputError, match="request 1 has no value") as info:
        Instance.from_requests([Request(0, 1, 1, priority=2), Request(0, 1, 1)])
    assert info.value.field == "priority"


def test_replace_revalidates_and_keeps_the_rest() -> None:
    inst = small()
    faster = inst.replace(arrival_s=inst.arrival_s / 2, name="fast")
    assert faster.name == "fast" and faster.family == "hand"
    assert faster.arrival_s.tolist() == [0.0, 0.25, 0.25]
    assert np.array_equal(faster.prefix_hash_values, inst.prefix_hash_values)
    with pytest.raises(InputError, match="output_tokens"):
        inst.replace(output_tokens=[1, 0, 1])
    with pytest.raises(InputError, match="unknown instance field"):
        inst.replace(colour="red")


def test_subset_keeps_prefix_hashes_aligned() -> None:
    inst = small()
    sub = inst.subset([0, 2])
    assert len(sub) == 2
    assert sub.tenant.tolist() == ["a", "a"]
    assert sub[0].prefix_hashes == (7, 8)
    assert sub[1].prefix_hashes == (9,)
    assert inst.subset(np.array([False, True, False]))[0].prefix_hashes == ()


@given(
    rows=st.lists(
        st.tuples(
            st.floats(0, 1e6, allow_nan=False),
            st.integers(1, 10**6),
            st.integers(1, 10**6),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
        ),
        min_size=1,
        max_size=30,
    ),
    data=st.data(),
)
def test_subset_equals_rebuilding_from_the_chosen_rows(rows: list, data) -> None:
    rows.sort(key=lambda r: r[0])
    inst = Instance.from_requests(
        [Request(a, s, o, prefix_hashes=tuple(h)) for a, s, o, h in rows]
    )
    keep = sorted(
        data.draw(st.sets(st.integers(0, len(rows) - 1), min_size=1), label="keep")
    )
    expected = Instance.from_requests([inst[i] for i in keep])
    assert inst.subset(keep) == expected


def test_an_instance_pickles_with_its_params() -> None:
    """Instances travel to worker processes: the read-only params come back."""
    import pickle

    instance = Instance([0.0, 1.0], [3, 4], [2, 5], name="two", params={"rate": 2.0})
    back = pickle.loads(pickle.dumps(instance))
    assert back.name == "two" and dict(back.params) == {"rate": 2.0}
    np.testing.assert_array_equal(back.output_tokens, instance.output_tokens)
