"""Regenerate search_spaces/<name>.json from the presets defined in code.

Run after changing a preset or a model family's default space:

    .venv/bin/python scripts/write_presets.py            # write the files
    .venv/bin/python scripts/write_presets.py --check    # exit 1 if any file is stale

tests/test_search_space.py fails while the files and the code disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ciss_autoimpute.tuning.presets import available_presets
from ciss_autoimpute.tuning.search_space import SearchSpace

OUT_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files; write nothing")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"directory to write to (default {OUT_DIR})")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    if not args.check:
        out_dir.mkdir(parents=True, exist_ok=True)
    stale = []
    for name in available_presets():
        path = out_dir / f"{name}.json"
        text = SearchSpace.preset(name).to_json()
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "stale" if args.check else "written"
    for path in stale:
        sys.stdout.write(f"{verb}: {path}\n")
    if not stale:
        sys.stdout.write("all preset files up to date\n")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
