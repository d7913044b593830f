"""A worker's /metrics, read back with prometheus_client's own parser (never split by hand)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.metrics import LATENCY_BUCKETS, BatchHistogram, Metrics, sample_sum

# The README's list ("Streaming: producers and subscribers") plus the failure counters.
FAMILIES = {
    "modelvc_predictions": "counter",
    "modelvc_batch_size": "histogram",
    "modelvc_predict_seconds": "histogram",
    "modelvc_end_to_end_seconds": "histogram",
    "modelvc_dead_letters": "counter",
    "modelvc_dead_letter_failures": "counter",
    "modelvc_artifact_failures": "counter",
    "modelvc_artifact_cache_errors": "counter",
    "modelvc_version_switches": "counter",
    "modelvc_serving_info": "gauge",
    "modelvc_consumer_lag": "gauge",
    "modelvc_delivery_info": "gauge",
    "modelvc_transactions": "counter",
    "modelvc_commit_seconds": "histogram",
    "modelvc_producer_restarts": "counter",
    "modelvc_batches_in_flight": "gauge",
    "modelvc_send_failures": "counter",
    "modelvc_rollout_percent": "gauge",
    "modelvc_shadow_info": "gauge",
    "modelvc_shadow_failures": "counter",
}


def parsed(m: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        f.name: [(s.name, s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(m.render().decode())
    }


def test_every_family_is_declared_with_help_and_type() -> None:
    m = Metrics()
    text = m.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The library's default `_created` companions (creation times) come on their own.
    created = {n for n in families if n.endswith("_created") and n[:-8] in FAMILIES}
    assert {name: f.type for name, f in families.items() if name not in created} == FAMILIES
    lines = text.splitlines()
    for name, family in families.items():
        exposed = f"{name}_total" if family.type == "counter" else name
        assert family.documentation.strip(), name
        assert any(ln.startswith(f"# HELP {exposed} ") for ln in lines), name
        assert f"# TYPE {exposed} {family.type}" in lines, name


def test_label_values_with_quotes_backslashes_and_newlines_are_escaped() -> None:
    m = Metrics()
    hostile = 'a"b\\c\nd}e,f="g"'
    m.serving("churn", hostile, "c0ffee")
    text = m.render().decode()
    # One line per sample: the newline is escaped, not written.
    assert 'ref="a\\"b\\\\c\\nd}e,f=\\"g\\""' in text
    assert [labels for _, labels, _ in parsed(m)["modelvc_serving_info"]] == [
        {"model": "churn", "ref": hostile, "commit": "c0ffee"}
    ]


def test_predictions_have_one_label_set_for_the_stream_and_http() -> None:
    m = Metrics()
    m.predicted("churn", "c1", "stream", 40)
    m.predicted("churn", "c1", "http")
    m.predicted("churn", "c1", "http")
    totals = {
        labels["path"]: value
        for name, labels, value in parsed(m)["modelvc_predictions"]
        if name == "modelvc_predictions_total"
    }
    assert totals == {"stream": 40.0, "http": 2.0}
    label_sets = {tuple(sorted(labels)) for name, labels, _ in parsed(m)["modelvc_predictions"]}
    assert label_sets == {("arm", "commit", "model", "path")}
    text = m.render().decode()
    assert sample_sum(text, "modelvc_predictions_total") == 42
    assert sample_sum(text, "modelvc_predictions_total", path="http", model="churn") == 2


def test_the_batch_histogram_equals_the_library_histogram_row_by_row() -> None:
    """One bincount per batch must expose what one observe per row would."""
    values = np.concatenate(
        [
            np.random.default_rng(1).exponential(0.05, size=997),
            np.asarray(LATENCY_BUCKETS),  # exactly on a bound: counted in that bucket (le)
            np.asarray([0.0, 5.0001, 60.0]),
        ]
    )
    batch = BatchHistogram("e2e_seconds", "doc", LATENCY_BUCKETS)
    batch.observe_many(values[:500])
    batch.observe_many(values[500:])
    ours = CollectorRegistry()
    ours.register(batch)
    library = CollectorRegistry()
    reference = Histogram("e2e_seconds", "doc", buckets=LATENCY_BUCKETS, registry=library)
    for v in values.tolist():
        reference.observe(v)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("le", "")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.name.endswith("_created")
        }

    got, expected = samples(ours), samples(library)
    assert got.keys() == expected.keys()
    # numpy sums pairwise, the library one by one: equal up to rounding.
    assert np.isclose(got.pop(("e2e_seconds_sum", "")), expected.pop(("e2e_seconds_sum", "")))
    assert got == expected
    assert got[("e2e_seconds_count", "")] == len(values)
    assert got[("e2e_seconds_bucket", "0.001")] == expected[("e2e_seconds_bucket", "0.001")] > 1


def test_a_ref_that_moves_on_leaves_no_stale_serving_series() -> None:
    m = Metrics()
    m.serving("churn", "production", "c1")
    m.serving("churn", "main", "c1")
    m.not_serving("churn", "production", "c1")
    m.not_serving("churn", "production", "c1")  # already gone: a no-op, not an error
    m.serving("churn", "production", "c2")
    series = {
        (labels["ref"], labels["commit"]) for _, labels, _ in parsed(m)["modelvc_serving_info"]
    }
    assert series == {("main", "c1"), ("production", "c2")}


def test_consumer_lag_shows_the_assigned_partitions_only() -> None:
    m = Metrics()
    m.lag({0: 5, 1: 7})
    m.lag({1: 2})  # partition 0 was revoked
    assert [(labels, value) for _, labels, value in parsed(m)["modelvc_consumer_lag"]] == [
        ({"partition": "1"}, 2.0)
    ]


def test_each_worker_has_a_registry_of_its_own() -> None:
    """Several workers (or tests) in one process: no shared series, no duplicate names."""
    first, second = Metrics(), Metrics()
    first.dead_letter("wrong_type")
    first.batch(120)
    assert sample_sum(first.render().decode(), "modelvc_dead_letters_total") == 1
    assert sample_sum(second.render().decode(), "modelvc_dead_letters_total") == 0
    text = first.render().decode()
    assert sample_sum(text, "modelvc_batch_size_bucket", le="100.0") == 0
    assert sample_sum(text, "modelvc_batch_size_bucket", le="500.0") == 1
    assert sample_sum(text, "modelvc_batch_size_count") == 1
