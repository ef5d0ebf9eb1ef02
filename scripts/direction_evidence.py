"""How often ``missingness_direction_evidence`` calls a direction, and whether it is right.

On the accuracy benchmark's tables and masks (``scripts/benchmark.py``; nothing is
downloaded), for each mechanism: how many numeric columns with missing cells the
evidence read, how many it called (``|t| >= 3``), how many of those calls were wrong
(every MNAR mask here hides high values, so the truth is +1), the range of ``|t|`` of
the calls, and the columns left uncalled under MNAR.

    python scripts/direction_evidence.py
    python scripts/direction_evidence.py --mechanisms mnar_paper --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import MNAR_MECHANISMS, load_problem, make_mask  # noqa: E402

from ciss_autoimpute import ClusterDataset, missingness_direction_evidence  # noqa: E402

TABLES = ("concrete", "diabetes", "wine", "penguins", "breast_cancer", "red_wine_quality", "yeast")
PAPER_TABLES = ("breast_cancer", "concrete", "red_wine_quality", "yeast")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mechanisms", nargs="+", default=["mnar", "mnar_paper", "mcar", "mar"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rate", type=float, default=0.3)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # clustering fallbacks on MCAR masks
    print("| mechanism | columns read | called | wrong calls | |t| of the calls | uncalled (MNAR) |")
    print("|---|---:|---:|---:|---|---|")
    for mech in args.mechanisms:
        read = called = wrong = 0
        ts: list[float] = []
        uncalled: list[str] = []
        for name in PAPER_TABLES if mech == "mnar_paper" else TABLES:
            problem = load_problem(name)
            for seed in args.seeds:
                mask = np.asarray(make_mask(problem, mech, args.rate, seed))
                ds = ClusterDataset(problem.complete.mask(mask), seed=seed, device="cpu")
                ev = missingness_direction_evidence(ds)
                calls = ev[ev["direction"] != 0]
                read += len(ev)
                called += len(calls)
                ts += [abs(float(t)) for t in calls["t"]]
                if mech in MNAR_MECHANISMS:
                    wrong += int((calls["direction"] != 1).sum())
                    uncalled += [f"{name}/{col} s{seed} ({t:+.1f})" for col, t in ev.loc[ev["direction"] == 0, "t"].items()]
        span = f"{min(ts):.1f}-{max(ts):.1f}" if ts else "-"
        wrong_text = str(wrong) if mech in MNAR_MECHANISMS else "n/a"
        print(f"| {mech} | {read} | {called} | {wrong_text} | {span} | {', '.join(uncalled) or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
