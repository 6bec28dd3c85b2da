"""compress.utils.resources: per-stage peak RSS and CPU time are the stage's own, not the process's."""
import numpy as np

from compress.utils.resources import measure


def test_peak_rss_is_per_stage_and_cpu_time_counts_work():
    big = np.ones(400_000_000 // 8)  # 400 MB touched before the stage
    big[::512] += 1
    del big
    with measure() as small:
        x = np.ones(50_000_000 // 8)
        x += 1
    with measure() as large:
        y = np.ones(200_000_000 // 8)
        y += 1
    if small["peak_scope"] == "stage":  # Linux with /proc/self/clear_refs
        assert large["peak_rss_mb"] - small["peak_rss_mb"] > 100  # the 400 MB before neither stage counts
    assert large["cpu_s"] > 0 and large["wall_s"] >= 0
    assert small["peak_scope"] in ("stage", "process")


def test_nested_stages_keep_the_outer_peak():
    """A phase inside a pass resets the kernel's mark; the pass still reports the phase's peak."""
    with measure() as outer:
        with measure() as inner:
            y = np.ones(300_000_000 // 8)
            y += 1
            del y
        with measure() as after:
            z = np.ones(10_000_000 // 8)
            z += 1
    if outer["peak_scope"] == "stage":
        assert inner["peak_rss_mb"] - after["peak_rss_mb"] > 200
        assert outer["peak_rss_mb"] >= inner["peak_rss_mb"]
