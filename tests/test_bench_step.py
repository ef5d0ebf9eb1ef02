"""scripts/bench_step.py: per-step timings print one row per family."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"


def test_bench_step_times_each_family_in_three_parts(capsys):
    spec = importlib.util.spec_from_file_location("bench_step_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--families", "cissvae", "notmiwae", "--rows", "300", "--batch-size", "100",
                        "--steps", "2", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| cissvae", "| notmiwae"))]
    assert len(rows) == 2
    for row in rows:
        forward, backward, optimiser, step = (float(v) for v in row.strip("|").split("|")[1:])
        assert min(forward, backward, optimiser) > 0
        assert abs(step - (forward + backward + optimiser)) < 0.02


def test_bench_step_package_arch_uses_the_package_batch(capsys):
    spec = importlib.util.spec_from_file_location("bench_step_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--families", "cissvae", "--package-arch", "--rows", "8000",
                        "--steps", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    # The package's batch of 4000 rows replaces --batch-size, and the row is timed.
    assert "batch 4000" in out
    row = next(line for line in out.splitlines() if line.startswith("| cissvae"))
    assert float(row.strip("|").split("|")[-1]) > 0
