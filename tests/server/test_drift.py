"""Drift statistics, feature extraction, the monitor and reference profiles (the monitoring/ files:
tests/monitoring)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotwire.server.drift import (
    REFERENCE_FILENAME,
    DriftMonitor,
    FeatureExtractor,
    ReferenceProfile,
    ks_pvalue,
    ks_statistic,
    psi,
    psi_categorical,
)

# -- statistics
# ---------------------------------------------------------------------------------------------------


def brute_force_ks(a: np.ndarray, b: np.ndarray) -> float:
    points = np.concatenate((a, b))
    return max(abs(np.mean(a <= x) - np.mean(b <= x)) for x in points)


# Small integer ranges force many ties, within and across the samples.
samples = st.lists(
    st.integers(-5, 5).map(float) | st.floats(-10, 10, allow_nan=False), min_size=1, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(samples, samples)
def test_ks_statistic_matches_brute_force(a: list[float], b: list[float]) -> None:
    x, y = np.array(a), np.array(b)
    assert ks_statistic(x, y) == pytest.approx(brute_force_ks(x, y), abs=1e-12)
    assert ks_statistic(y, x) == pytest.approx(ks_statistic(x, y), abs=1e-12)


def test_ks_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError):
        ks_statistic(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        ks_statistic(np.array([np.nan]), np.array([1.0]))


def test_ks_pvalue() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 1000)
    assert ks_pvalue(ks_statistic(a, a.copy()), 1000, 1000) == pytest.approx(1.0)
    b = rng.normal(1, 1, 1000)
    assert ks_pvalue(ks_statistic(a, b), 1000, 1000) < 1e-6
    ps = [ks_pvalue(d, 200, 300) for d in np.linspace(0, 1, 401)]
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert np.all(np.diff(ps) <= 1e-12)  # non-increasing in D (across the two series' switch-over too)
    assert ps[0] == 1.0 and ps[-1] < 1e-30
    # Spot values of Kolmogorov's distribution: Q_KS(1.36) ~ 0.049, Q_KS(1.0) ~ 0.27.
    ne = 100 * 100 / 200
    scale = np.sqrt(ne) + 0.12 + 0.11 / np.sqrt(ne)
    assert ks_pvalue(1.36 / scale, 100, 100) == pytest.approx(0.0494, abs=1e-3)
    assert ks_pvalue(1.0 / scale, 100, 100) == pytest.approx(0.2700, abs=1e-3)


def test_psi() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 5000)
    assert psi(a, a.copy()) == pytest.approx(0.0, abs=1e-9)
    shifted = rng.normal(1, 1, 5000)
    assert psi(a, shifted) > 0.2
    # Bins come from the reference, so swapping the sides changes the value, but not by much.
    assert psi(shifted, a) == pytest.approx(psi(a, shifted), rel=0.25)
    same = rng.normal(0, 1, 5000)
    assert psi(a, same) < 0.02
    # A discrete reference merges duplicate quantile edges; an unseen value lands in an (epsilon-smoothed)
    # bin.
    assert psi(np.zeros(100), np.zeros(100)) == 0.0
    assert psi(np.zeros(100), np.ones(100)) > 1.0 and psi(np.zeros(100), -np.ones(100)) > 1.0


def test_psi_categorical() -> None:
    assert psi_categorical(np.array([10, 20, 30]), np.array([1, 2, 3])) == pytest.approx(0.0, abs=1e-12)
    assert psi_categorical(np.array([10, 20]), np.array([10, 20, 0])) == pytest.approx(0.0, abs=1e-12)
    assert psi_categorical(np.array([100, 100, 100]), np.array([200, 50, 50])) > 0.2
    with pytest.raises(ValueError):
        psi_categorical(np.array([0, 0]), np.array([1, 1]))


# -- features
# -----------------------------------------------------------------------------------------------------


def test_feature_names() -> None:
    assert FeatureExtractor("x", (4,), np.float32).names == ("x[0]", "x[1]", "x[2]", "x[3]")
    assert FeatureExtractor("x", (2, 2), np.int64).names == ("x[0]", "x[1]", "x[2]", "x[3]")
    assert FeatureExtractor("img", (32, 32, 3), np.uint8).names == (
        "img.mean",
        "img.std",
        "img.ch0",
        "img.ch1",
        "img.ch2",
    )
    chw = FeatureExtractor("img", (3, 32, 32), np.float32)
    assert chw.channel_axis == 0 and chw.names[2:] == ("img.ch0", "img.ch1", "img.ch2")
    assert FeatureExtractor("gray", (1, 32, 32), np.float32).names == ("gray.mean", "gray.std")
    assert FeatureExtractor("seq", (100,), np.float32).names == ("seq.mean", "seq.std")
    assert FeatureExtractor("s", (2,), np.object_).names == ("s[0].len", "s[1].len")
    assert FeatureExtractor("s", (100,), np.object_).names == ("s.len",)
    probs = FeatureExtractor("probs", (3,), np.float32, output=True)
    assert probs.names == ("probs.class", "probs.max") and probs.categorical == (True, False)
    assert FeatureExtractor("probs", (3,), np.float32).names == ("probs[0]", "probs[1]", "probs[2]")
    with pytest.raises(TypeError):
        FeatureExtractor("c", (2,), np.complex64)


def test_feature_values() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (5, 8, 9, 3), dtype=np.uint8)
    feats = FeatureExtractor.for_batch("img", img).extract(img)
    flat = img.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(feats[:, 0], flat.mean(axis=1))
    np.testing.assert_allclose(feats[:, 1], flat.std(axis=1))
    np.testing.assert_allclose(feats[:, 2:], img.reshape(5, -1, 3).mean(axis=1))
    chw = rng.normal(size=(4, 2, 10, 10)).astype(np.float32)
    feats = FeatureExtractor.for_batch("x", chw).extract(chw)
    np.testing.assert_allclose(feats[:, 2:], chw.reshape(4, 2, -1).astype(np.float64).mean(axis=2), rtol=1e-6)
    # Large items: summary over a strided sample of <= 4096 elements: within ~5 standard errors of the exact
    # values.
    big = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    feats = FeatureExtractor.for_batch("big", big).extract(big)
    exact = big.reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(feats[:, 0], exact.mean(axis=1), atol=6)
    np.testing.assert_allclose(feats[:, 1], exact.std(axis=1), atol=4)
    np.testing.assert_allclose(feats[:, 2:], big.reshape(3, -1, 3).mean(axis=1), atol=10)
    big_chw = rng.normal(5, 2, (2, 3, 100, 100)).astype(np.float32)
    feats = FeatureExtractor.for_batch("big", big_chw).extract(big_chw)
    np.testing.assert_allclose(feats[:, 2:], big_chw.reshape(2, 3, -1).mean(axis=2), atol=0.3)
    exact_f = FeatureExtractor("big", (3, 100, 100), np.float32, max_summary_elements=10**6).extract(big_chw)
    np.testing.assert_allclose(
        exact_f[:, 1], big_chw.reshape(2, -1).astype(np.float64).std(axis=1), rtol=1e-6
    )
    strings = np.array([[b"ab", b""], [b"xyz", b"q"]], dtype=object)
    np.testing.assert_array_equal(FeatureExtractor.for_batch("s", strings).extract(strings), [[2, 0], [3, 1]])
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(
        FeatureExtractor.for_batch("p", scores, output=True).extract(scores), [[1, 0.7], [0, 0.5]], rtol=1e-6
    )


# -- monitor
# ------------------------------------------------------------------------------------------------------

FEATURES = 16


def scores_for(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(0, 0.5, (classes.size, 3)) + 3.0 * np.eye(3)[classes]
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def feed(
    monitor: DriftMonitor, rng: np.random.Generator, rows: int, shift: float, class_p: list[float]
) -> None:
    for _ in range(rows // 50):  # requests of 50 rows
        x = rng.normal(shift, 1.0, (50, FEATURES)).astype(np.float32)
        monitor.observe({"x": x}, {"probs": scores_for(rng.choice(3, 50, p=class_p), rng)})


def test_monitor_no_false_alarm_then_detects_shift() -> None:
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(["x"], ["probs"], window_rows=1000, reference_rows=1000)
    uniform = [1 / 3, 1 / 3, 1 / 3]
    feed(monitor, rng, 1000, 0.0, uniform)  # the reference capture
    report = monitor.compute()
    assert report.features == () and report.reference_complete
    feed(monitor, rng, 1000, 0.0, uniform)
    report = monitor.compute()
    assert len(report.inputs) == FEATURES
    assert all(f.n_reference == 1000 and f.n_current == 1000 for f in report.inputs)
    # Same distribution: 16 KS tests + the max-score feature. Bonferroni-corrected: no feature below 0.05 /
    # 17.
    tests = [f for f in report.features if f.ks_pvalue is not None]
    assert len(tests) == FEATURES + 1
    assert report.drifted(0.05 / len(tests)) == []
    assert all(f.psi < 0.1 for f in report.features)
    assert report.get("probs.class") is not None and report.get("probs.class").psi < 0.05

    feed(monitor, rng, 1000, 0.5, [0.6, 0.2, 0.2])  # +0.5 std on every input feature, shifted class mix
    report = monitor.compute()
    drifted = report.drifted(0.05)
    for j in range(FEATURES):
        feature = report.get(f"x[{j}]")
        assert feature is not None and f"x[{j}]" in drifted
        assert feature.ks_pvalue is not None and feature.ks_pvalue < 0.05 and feature.psi > 0.1
    classes = report.get("probs.class")
    assert classes is not None and classes.categorical and classes.ks is None and classes.psi > 0.1
    samples = report.metric_samples()
    assert ("hotwire_drift_psi", "probs.class", classes.psi) in samples
    assert {m for m, _, _ in samples} == {"hotwire_drift_ks", "hotwire_drift_ks_pvalue", "hotwire_drift_psi"}


def test_monitor_min_rows_and_window_bounds() -> None:
    monitor = DriftMonitor(["x"], [], window_rows=100, reference_rows=60, min_rows=50)
    rng = np.random.default_rng(5)
    monitor.observe({"x": rng.normal(size=(100, 2))}, {})  # 60 to the reference, 40 to the window
    assert monitor.compute().features == ()
    monitor.observe({"x": rng.normal(size=(10, 2))}, {})
    assert [f.n_current for f in monitor.compute().features] == [50, 50]
    monitor.observe({"x": rng.normal(size=(1000, 2))}, {})  # only the last 100 rows are kept
    assert [(f.n_reference, f.n_current) for f in monitor.compute().features] == [(60, 100), (60, 100)]
    monitor.observe({"x": rng.normal(size=(5, 3))}, {"unmonitored": np.zeros(3)})  # a different item shape
    assert monitor.compute().skipped_rows == {"x": 5}


def test_image_brightness_shift() -> None:
    rng = np.random.default_rng(6)

    def images(rows: int, brightness: float) -> np.ndarray:
        base = rng.normal(120 + brightness, 20, (rows, 1, 1, 1))
        return np.clip(base + rng.normal(0, 30, (rows, 32, 32, 3)), 0, 255).astype(np.uint8)

    monitor = DriftMonitor(["image"], [], window_rows=200, reference_rows=200)
    for _ in range(4):
        monitor.observe({"image": images(50, 0)}, {})
    for _ in range(4):
        monitor.observe({"image": images(50, 0)}, {})
    report = monitor.compute()
    assert [f.feature for f in report.features] == [
        "image.mean",
        "image.std",
        "image.ch0",
        "image.ch1",
        "image.ch2",
    ]
    assert report.drifted(0.05 / 5) == []
    for _ in range(4):
        monitor.observe({"image": images(50, 25)}, {})
    report = monitor.compute()
    assert {"image.mean", "image.ch0", "image.ch1", "image.ch2"} <= set(report.drifted(0.05))
    assert report.get("image.mean").psi > 0.2


def test_observe_and_compute_concurrently() -> None:
    monitor = DriftMonitor(["x"], ["y"], window_rows=300, reference_rows=100, min_rows=10)
    stop = time.monotonic() + 0.5
    errors: list[BaseException] = []
    reports = 0

    def reader() -> None:
        nonlocal reports
        try:
            while time.monotonic() < stop:
                monitor.compute()
                for reference, current in monitor.snapshot().values():
                    for rows in (reference, current):
                        # Every row was written with all its features equal: a torn copy would show.
                        assert np.all(rows == rows[:, :1])
                reports += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    i = 0
    while time.monotonic() < stop:
        rows = np.repeat((np.arange(7, dtype=np.float32) + i)[:, None], 8, axis=1)
        monitor.observe({"x": rows}, {"y": rows[:, 0].astype(np.float64)})  # y: one feature per row, y[0]
        i += 7
    thread.join()
    assert not errors, errors
    assert reports > 0
    report = monitor.compute()
    assert {f.n_current for f in report.features} == {300} and len(report.features) == 9
    assert all(np.isfinite(f.psi) and f.ks_pvalue is not None for f in report.features)


def test_reference_profile_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    model_dir = tmp_path / "mymodel"
    assert ReferenceProfile.for_model(model_dir) is None
    batches = [
        {
            "x": rng.normal(size=(100, 4)).astype(np.float32),
            "tokens": np.array([[b"a" * int(n)] for n in rng.integers(1, 20, 100)], dtype=object),
        }
        for _ in range(6)
    ]
    profile = ReferenceProfile.from_capture(batches, max_rows=500)
    assert profile.arrays["x"].shape == (500, 4)
    profile.save(model_dir / REFERENCE_FILENAME)
    loaded = ReferenceProfile.for_model(model_dir)
    assert loaded is not None and set(loaded.arrays) == {"x", "tokens"}
    np.testing.assert_array_equal(loaded.arrays["x"], profile.arrays["x"])
    assert loaded.arrays["tokens"].dtype.kind == "S"
    assert [len(v) for v in loaded.arrays["tokens"][:, 0]] == [len(v) for v in profile.arrays["tokens"][:, 0]]

    # No capture phase: the first window is compared with the profile right away.
    monitor = DriftMonitor(["x", "tokens"], ["probs"], window_rows=100, reference=loaded)
    x = rng.normal(0.7, 1.0, (100, 4)).astype(np.float32)
    tokens = np.array([[b"a" * int(n)] for n in rng.integers(1, 20, 100)], dtype=object)
    monitor.observe({"x": x, "tokens": tokens}, {"probs": scores_for(rng.choice(3, 100), rng)})
    report = monitor.compute()
    assert {f"x[{j}]" for j in range(4)} <= set(report.drifted(0.05))
    assert report.get("x[0]").n_reference == 500 and report.get("x[0]").n_current == 100
    assert report.get("tokens[0].len") is not None and report.get("tokens[0].len").ks_pvalue > 0.05 / 5
    assert report.get("probs.max") is None  # no output reference in the profile: that one is still capturing
    assert not report.reference_complete


# -- monitoring/
# --------------------------------------------------------------------------------------------------
