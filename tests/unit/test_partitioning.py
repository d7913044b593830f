"""The partitioning rule modelvc checks is the one Kafka producers apply to keyed records."""

from __future__ import annotations

import pytest
from aiokafka.producer.producer import _DEFAULT_PARTITIONER
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streams.core.security import SECURITY_STREAM
from streams.core.signatures import keys_stream
from streams.topics import home_partition, misplaced


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200), st.integers(min_value=1, max_value=64))
def test_home_partition_is_the_default_partitioner_of_keyed_records(
    model: str, partitions: int
) -> None:
    assume(not model.startswith("~keys."))  # the one exception, below
    key = model.encode("utf-8", "surrogatepass")
    everything = list(range(partitions))
    assert home_partition(model, partitions) == _DEFAULT_PARTITIONER(key, everything, everything)


def test_misplaced_names_the_home_partition_only_when_elsewhere() -> None:
    home = home_partition("churn", 4)
    assert misplaced("churn", home, 4) is None
    reason = misplaced("churn", (home + 1) % 4, 4)
    assert reason is not None and f"lives on partition {home} of 4" in reason


@pytest.mark.parametrize("partitions", [1, 4, 12])
def test_the_key_ring_of_partition_p_lives_on_p(partitions: int) -> None:
    """Not on its hash partition: whether a key was active when an event was written is
    then decided by offset order in one partition, the same way by every reader."""
    for p in range(partitions):
        ring = keys_stream(p)
        assert home_partition(ring, partitions) == p
        assert misplaced(ring, p, partitions) is None
        for elsewhere in set(range(partitions)) - {p}:
            reason = misplaced(ring, elsewhere, partitions)
            assert reason is not None and f"ring of partition {p}, not {elsewhere}" in reason


def test_a_key_ring_of_a_partition_the_topic_lacks_is_misplaced_everywhere() -> None:
    for p in (4, 5, 9999):
        assert home_partition(keys_stream(p), 4) == p
        for partition in [*range(4), p]:
            reason = misplaced(keys_stream(p), partition, 4)
            assert reason is not None and "does not have" in reason


@pytest.mark.parametrize(
    "name", [SECURITY_STREAM, "~keys.01", "~keys.-1", "~keys.10000", "~keys.0 "]
)
def test_other_names_keep_the_default_partitioner(name: str) -> None:
    """~security, and names that only look like a ring, hash like any key."""
    everything = list(range(8))
    expected = _DEFAULT_PARTITIONER(name.encode(), everything, everything)
    assert home_partition(name, 8) == expected
    assert misplaced(name, expected, 8) is None
