"""compress.utils.resources: per-stage peak RSS and CPU time are the stage's own, not the process's.

Each case runs in a fresh interpreter: a long-lived process (the test session) reuses freed heap pages, so a new
allocation need not raise its resident size."""
import json
import subprocess
import sys

PRELUDE = """
import json, numpy as np
from compress.utils.resources import measure, process_peak_mb
def touch(mb):
    a = np.ones(mb * 1_000_000 // 8)
    a += 1
    return a
"""


def _run(body: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_peak_rss_is_per_stage_and_cpu_time_counts_work():
    m = _run("""
big = touch(400); del big   # 400 MB before the stages: neither counts it
with measure() as small:
    x = touch(50)
with measure() as large:
    y = touch(200)
print(json.dumps({"small": small, "large": large, "process": process_peak_mb()}))
""")
    small, large = m["small"], m["large"]
    assert small["peak_scope"] in ("stage", "process") and large["cpu_s"] > 0 and large["wall_s"] >= 0
    if small["peak_scope"] == "stage":  # Linux with /proc/self/clear_refs
        assert large["peak_rss_mb"] - small["peak_rss_mb"] > 100
        assert m["process"] > large["peak_rss_mb"] + 100  # the 400 MB before the stages is the process's peak


def test_nested_stages_keep_the_outer_peak():
    """A phase inside a pass resets the kernel's mark; the pass still reports the phase's peak."""
    m = _run("""
with measure() as outer:
    with measure() as inner:
        y = touch(300); del y
    with measure() as after:
        z = touch(10)
print(json.dumps({"outer": outer, "inner": inner, "after": after}))
""")
    if m["outer"]["peak_scope"] == "stage":
        assert m["inner"]["peak_rss_mb"] - m["after"]["peak_rss_mb"] > 200
        assert m["outer"]["peak_rss_mb"] >= m["inner"]["peak_rss_mb"]
