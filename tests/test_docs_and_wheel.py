"""The package works from a built wheel, and the documentation builds with warnings as errors.

* The wheel is built from a copy of the sources (so no ``build/`` or stale files of the
  work tree can leak in), installed with ``pip --target`` into a temporary folder, and
  imported in a fresh, isolated interpreter whose ``ciss_autoimpute`` must come from
  that folder — not from the work tree or the editable install. ``load_example()``
  there proves the example data is shipped inside the package.
* ``scripts/build_docs.sh`` runs ``mkdocs build --strict``; every docstring the API
  reference renders, every link and every anchor must be clean.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def _copy_sources(dest: Path) -> None:
    """The files a wheel is built from: top-level files (pyproject, README, ...) and the package."""
    dest.mkdir()
    for item in ROOT.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, dest / item.name)
    shutil.copytree(
        ROOT / "ciss_autoimpute",
        dest / "ciss_autoimpute",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )


_CHECK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import ciss_autoimpute
from ciss_autoimpute.datasets import load_example
from ciss_autoimpute.cli import main

df = load_example()
code = main(["example", "-o", "from_cli.csv", "-q"])
print(json.dumps({
    "file": ciss_autoimpute.__file__,
    "version": ciss_autoimpute.__version__,
    "shape": list(df.shape),
    "missing": int(df.isna().sum().sum()),
    "categorical": [c for c in df.columns if str(df[c].dtype) == "category"],
    "cli_code": code,
}))
"""


def test_load_example_works_from_an_installed_wheel(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _copy_sources(src)
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(dist)],
    )
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout}\n{built.stderr}"
    (wheel,) = dist.glob("ciss_autoimpute-*.whl")

    target = tmp_path / "installed"
    installed = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    )
    assert installed.returncode == 0, f"installing the wheel failed:\n{installed.stdout}\n{installed.stderr}"
    assert (target / "ciss_autoimpute" / "datasets" / "data" / "penguins.csv").is_file()
    assert (target / "ciss_autoimpute" / "datasets" / "data" / "SOURCE.md").is_file()
    entry_points = next(target.glob("ciss_autoimpute-*.dist-info")) / "entry_points.txt"
    assert "ciss-autoimpute = ciss_autoimpute.cli:main" in entry_points.read_text()

    # -I: no PYTHONPATH, no user site, no current folder on sys.path; dependencies come
    # from this interpreter's site-packages, the package from the wheel's folder.
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = _run([sys.executable, "-I", "-c", _CHECK, str(target)], cwd=work, env=env)
    assert proc.returncode == 0, f"importing from the wheel failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve().is_relative_to(target.resolve()), report["file"]
    assert report["shape"] == [344, 8]
    assert report["missing"] == 19
    assert report["categorical"] == ["species", "island", "sex"]
    assert report["cli_code"] == 0
    lines = (work / "from_cli.csv").read_text().splitlines()
    assert len(lines) == 345 and lines[0].startswith("species,island,")


def test_docs_build_strict(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]
    if missing:
        pytest.fail(
            f"the docs build needs {missing}, which are not installed in {sys.executable}; "
            f"install the docs extra: {sys.executable} -m pip install -e '.[docs]'"
        )
    site = tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = _run(["bash", str(ROOT / "scripts" / "build_docs.sh"), "--site-dir", str(site)], cwd=ROOT, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-5000:]}"
    assert "WARNING" not in log, log[-5000:]

    # The API reference is really generated from the docstrings ...
    data_page = (site / "api" / "data.html").read_text(encoding="utf-8")
    assert "ClusterDataset" in data_page and "val_proportion" in data_page
    assert "run_imputation" in (site / "api" / "run_imputation.html").read_text(encoding="utf-8")
    # ... and the docstrings' reStructuredText roles were turned into Markdown.
    for page in (site / "api").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert ":class:`" not in text and ":func:`" not in text, page.name
    for page in ("index.html", "quickstart.html", "benchmarks.html", "guide/clustering.html", "guide/cli.html"):
        assert (site / page).is_file(), page


def test_rst_roles_and_tables_become_markdown() -> None:
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs" / "_ext" / "griffe_rst.py")
    if importlib.util.find_spec("griffe") is None:
        pytest.fail("griffe (from mkdocstrings[python]) is not installed; install the docs extra.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    convert = module.rst_to_markdown

    assert convert("see :func:`~ciss_autoimpute.tuning.autotune` and :class:`Imputer`") == (
        "see `autotune` and `Imputer`"
    )
    assert convert(":func:`the loop <ciss_autoimpute.training.Trainer.fit>`") == "`the loop`"
    table = "\n".join([
        "=========== ======",
        "function    shows",
        "=========== ======",
        ":func:`a`   one",
        ":func:`long_name` two",
        "=========== ======",
    ])
    assert convert(table).splitlines()[:4] == [
        "| function | shows |",
        "| --- | --- |",
        "| `a` | one |",
        "| `long_name` | two |",
    ]
    assert convert("Total:\n\n.. math::\n\n    a = b\n\nafter") == "Total:\n\n```text\na = b\n```\n\nafter"
    assert convert("The network is::\n\n    x -> y") == "The network is:\n\n    x -> y"
