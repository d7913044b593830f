"""The partitioning rule modelvc checks is the one Kafka producers apply to keyed records."""

from __future__ import annotations

from aiokafka.producer.producer import _DEFAULT_PARTITIONER
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.topics import home_partition, misplaced


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200), st.integers(min_value=1, max_value=64))
def test_home_partition_is_the_default_partitioner_of_keyed_records(
    model: str, partitions: int
) -> None:
    key = model.encode("utf-8", "surrogatepass")
    everything = list(range(partitions))
    assert home_partition(model, partitions) == _DEFAULT_PARTITIONER(key, everything, everything)


def test_misplaced_names_the_home_partition_only_when_elsewhere() -> None:
    home = home_partition("churn", 4)
    assert misplaced("churn", home, 4) is None
    reason = misplaced("churn", (home + 1) % 4, 4)
    assert reason is not None and f"lives on partition {home} of 4" in reason
