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
