"""scripts/bench_speed.py: the package comparison's alternating repeats and their median."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_speed_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repeats_alternate_both_sides_and_report_the_median(monkeypatch, tmp_path):
    module = _load()
    order = []
    # Package epochs of 4, 3 and 5 s against ours of 1 s (val every epoch 2 s): the CPU
    # speedups are 4 / 3 / 5x (default) and 2 / 1.5 / 2.5x (like for like); medians 4 and 2.
    package_seconds = [4.0, 3.0, 5.0]

    def fake_child(python, spec, threads):
        order.append((spec["kind"], spec.get("val_every"), spec["repeat"]))
        if spec["kind"] == "package":
            s = package_seconds[spec["repeat"]]
            return {"epoch_seconds": s, "cpu_epoch_seconds": s, "peak_rss_mb": 100.0, "version": "x"}
        s = 2.0 if spec["val_every"] else 1.0
        return {"epoch_seconds": s, "cpu_epoch_seconds": s, "gflops": 10.0, "matmul_gflops": 20.0,
                "cpu_gflops": 10.0, "cpu_matmul_gflops": 20.0, "gflop_per_epoch": 10.0, "peak_rss_mb": 100.0,
                "batch_size_used": 4000}

    monkeypatch.setattr(module, "run_child", fake_child)
    out = tmp_path / "speed.md"
    assert module.main(["--rows", "1000", "--sections", "package", "--cissvae-python", sys.executable,
                        "--repeats", "3", "--memory-rows", "0", "--out", str(out)]) == 0
    # Ours (validation every epoch, then the default epoch) and the package, run after run.
    assert order == [(kind, val, r) for r in range(3) for kind, val in (("ours", 1), ("ours", 0), ("package", None))]
    text = out.read_text()
    assert "| 1,000 (run 1) | 4.00 |" in text and "| 1,000 (run 3) | 5.00 |" in text
    median = next(line for line in text.splitlines() if "median of 3 alternating runs" in line)
    assert "2.0x like for like (runs 2.0, 1.5, 2.5)" in median
    assert "4.0x with our default (runs 4.0, 3.0, 5.0)" in median
    assert "like for like NOT met, default NOT met" in median


def test_several_threads_are_judged_on_the_wall_clock(monkeypatch, tmp_path):
    """With 2 threads CPU time counts waiting worker threads: the verdict reads wall seconds."""
    module = _load()

    def fake_child(python, spec, threads):
        assert threads == 2
        if spec["kind"] == "package":
            # 4 s of wall clock, 6 s of CPU (its second thread mostly waits).
            return {"epoch_seconds": 4.0, "cpu_epoch_seconds": 6.0, "peak_rss_mb": 100.0, "version": "x"}
        wall = 1.0 if spec["val_every"] else 0.5
        return {"epoch_seconds": wall, "cpu_epoch_seconds": 2 * wall, "gflops": 10.0, "matmul_gflops": 20.0,
                "cpu_gflops": 5.0, "cpu_matmul_gflops": 20.0, "gflop_per_epoch": 10.0, "peak_rss_mb": 100.0,
                "batch_size_used": 4000}

    monkeypatch.setattr(module, "run_child", fake_child)
    for repeats in ("1", "3"):
        out = tmp_path / f"speed{repeats}.md"
        assert module.main(["--cissvae-rows", "100000", "--sections", "package", "--cissvae-python", sys.executable,
                            "--threads", "2", "--repeats", repeats, "--memory-rows", "0", "--out", str(out)]) == 0
        text = out.read_text()
        # Wall: 4x like for like, 8x default; CPU time would say 3x / 6x.
        verdict = next(line for line in text.splitlines() if line.startswith("- >= 5x"))
        assert "like for like NOT met, default met" in verdict and "(wall)" in verdict, verdict
        assert "8.0x with our default" in verdict, verdict
        share = next(line for line in text.splitlines() if "package architecture (batch 4000)" in line)
        assert "wall 50%, CPU time 25% -> met (wall)" in share, share


def test_repeats_must_be_positive():
    import pytest

    module = _load()
    with pytest.raises(SystemExit):
        module.main(["--repeats", "0", "--sections", "package"])
