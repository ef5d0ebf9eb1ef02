"""The ``ciss-autoimpute`` command end to end, through ``subprocess``, on tiny files."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TRAIN = {"epochs": 3, "max_loops": 1, "epochs_per_loop": 2, "batch_size": 32}


def run_cli(*args: object, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the command in a fresh interpreter with no display, as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-m", "ciss_autoimpute.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def assert_usage_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit 2, one line on stderr matching ``pattern``, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("ciss-autoimpute: error: ")
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def cli_main(capsys):
    """``main(argv)`` in this process, for quick refusals; restores the logging it configures."""
    import logging
    import warnings

    import optuna

    from ciss_autoimpute.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    show, verbosity = warnings.showwarning, optuna.logging.get_verbosity()

    # Optuna's INFO lines (from the test's own set-up) would go to a stale captured stream.
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def run(*args: object) -> subprocess.CompletedProcess:
        capsys.readouterr()  # drop anything printed before the command
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)
    warnings.showwarning = show
    optuna.logging.set_verbosity(verbosity)


def _tiny_frame(seed: int = 0, n: int = 60) -> pd.DataFrame:
    """60 x 4 with holes: three correlated numbers and a three-level category, plus an id."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    df = pd.DataFrame(
        {
            "id": [f"p{i:03d}" for i in range(n)],
            "a": np.round(z[:, 0], 3),
            "b": np.round(z[:, 0] - 0.5 * z[:, 1], 3),
            "c": np.round(10 + 2 * z[:, 1], 3),
            "group": np.array(["x", "y", "z"])[np.digitize(z[:, 0], [-0.5, 0.5])],
        }
    )
    df.loc[rng.random(n) < 0.2, "a"] = np.nan
    df.loc[rng.random(n) < 0.15, "c"] = np.nan
    df.loc[rng.random(n) < 0.1, "group"] = None
    return df


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    _tiny_frame().to_csv(path, index=False)
    return path


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    """Two small families with cluster-specific layers possible, trained for a handful of epochs."""
    from ciss_autoimpute import SearchSpace

    space = SearchSpace(
        {
            "cissvae": {"num_hidden_layers": 1, "hidden_dim": 8, "latent_dim": 2, "num_shared_encode": [0, 1]},
            "vae": {"num_hidden_layers": 1, "hidden_dim": 8, "latent_dim": 2},
        },
        train={**TRAIN, "lr": (1e-3, 1e-2)},
    )
    path = tmp_path / "space.json"
    space.to_json(path)
    return path


def _same_observed(original: pd.DataFrame, imputed: pd.DataFrame) -> None:
    assert list(imputed.columns) == list(original.columns)
    assert imputed.shape == original.shape
    assert not imputed.isna().to_numpy().any()
    observed = original.notna().to_numpy()
    assert (original.to_numpy()[observed] == imputed.to_numpy()[observed]).all()


# ---------------------------------------------------------------------------- example
def test_example_writes_the_shipped_table_and_it_round_trips(tmp_path):
    from ciss_autoimpute.datasets import load_example

    proc = run_cli("example", "-o", tmp_path / "penguins.csv")
    assert_ok(proc)
    assert "344 rows x 8 columns, 19 missing cells" in proc.stderr
    back = pd.read_csv(tmp_path / "penguins.csv")
    shipped = load_example()
    assert list(back.columns) == list(shipped.columns)
    assert back.isna().equals(shipped.isna())

    def cells(df):
        return df.astype(object).where(df.notna(), None).to_numpy().tolist()

    assert cells(back) == cells(shipped)

    to_stdout = run_cli("example", "-o", "-", "--quiet")
    assert_ok(to_stdout)
    assert to_stdout.stderr == ""
    assert cells(pd.read_csv(io.StringIO(to_stdout.stdout))) == cells(shipped)


def test_example_as_parquet_keeps_the_dtypes(tmp_path):
    pytest.importorskip("pyarrow")
    from ciss_autoimpute.datasets import load_example

    assert_ok(run_cli("example", "-o", tmp_path / "penguins.parquet", "-q"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "penguins.parquet"), load_example())


# ---------------------------------------------------------------------------- impute
def test_impute_fills_every_hole_and_keeps_observed_cells(tmp_path, tiny_csv):
    out, model = tmp_path / "imputed.csv", tmp_path / "vae.pt"
    proc = run_cli(
        "impute", tiny_csv, "-o", out, "--model", "vae", "--train-params", json.dumps(TRAIN),
        "--seed", "0", "--device", "cpu", "--index-col", "id", "--save-model", model,
    )
    assert_ok(proc)
    original = pd.read_csv(tiny_csv)
    n_missing = int(original.isna().to_numpy().sum())
    assert f"imputed {n_missing} missing cells in 60 rows with vae" in proc.stderr
    imputed = pd.read_csv(out)
    _same_observed(original, imputed)  # the id column comes back first, as the index it was
    assert set(imputed["group"]) <= {"x", "y", "z"}

    from ciss_autoimpute import Imputer

    again = Imputer.load(model).transform(original.set_index("id"))
    assert not again.isna().to_numpy().any()


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.csv.gz", "t.parquet"])
def test_tables_round_trip_by_suffix(tmp_path, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    from ciss_autoimpute.cli import read_table, write_table

    frame = _tiny_frame()
    path = write_table(frame, tmp_path / name)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, then renamed
    back = read_table(path, index_col="id")
    assert back.index.tolist() == frame["id"].tolist()
    assert (back.isna().to_numpy() == frame.drop(columns="id").isna().to_numpy()).all()
    np.testing.assert_array_equal(back[["a", "b", "c"]].to_numpy(), frame[["a", "b", "c"]].to_numpy())


def test_reading_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    from ciss_autoimpute.cli import UsageError, read_table

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UsageError, match=r"need pyarrow, which is not installed; install it with 'pip install pyarrow"):
        read_table(tmp_path / "t.parquet")


# ---------------------------------------------------------------------------- tune, inspect, worker
def _pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png") if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"}


def test_tune_into_sqlite_then_inspect_report_and_worker(tmp_path, tiny_csv, space_file, cli_main):
    import optuna

    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    report = tmp_path / "report"
    proc = run_cli(
        "tune", tiny_csv, "--space", space_file, "--trials", 2, "--storage", url, "--study", "tiny",
        "--index-col", "id", "-o", tmp_path / "best.csv", "--report", report, "--save-model", tmp_path / "best.pt",
        "--device", "cpu",
    )
    assert_ok(proc)
    # The trial bar (Optuna's) and the epoch bar of each fit were drawn on stderr.
    assert "2/2" in proc.stderr and "fit:" in proc.stderr
    assert "study 'tiny': 2 trials (2 complete)" in proc.stderr
    _same_observed(pd.read_csv(tiny_csv), pd.read_csv(tmp_path / "best.csv"))

    # The report: its figures, drawn headless, and an index linking each of them.
    figures = _pngs(report)
    assert {"optimization_history.png", "history.png", "missingness.png", "column_errors.png",
            "architecture.png"} <= figures
    index = (report / "index.md").read_text()
    assert index.startswith("# Study `tiny`")
    for name in figures:
        assert f"]({name})" in index

    # What a worker needs is recorded on the study.
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs["data_path"] == str(tiny_csv.resolve())
    assert study.user_attrs["seed"] == 0 and study.user_attrs["data_options"]["index_col"] == "id"

    shown = run_cli("inspect", url)
    assert_ok(shown)
    assert "study 'tiny': 2 trials, 2 complete" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines() if re.match(r"\s*\d+\s+complete", line)]
    assert sorted(int(r[0]) for r in rows) == [0, 1]
    assert {r[3] for r in rows} <= {"cissvae", "vae"}
    values = [float(r[2]) for r in rows]
    assert values == sorted(values)  # best first

    worker = run_cli("worker", "--storage", url, "--study", "tiny", "--trials", 1, "--device", "cpu", "-q")
    assert_ok(worker)
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 3

    # The same study name on other data is refused before any training.
    other = tmp_path / "other.csv"
    _tiny_frame(seed=1).to_csv(other, index=False)
    assert_usage_error(
        cli_main("tune", other, "--space", space_file, "--trials", 1, "--storage", url, "--study", "tiny",
                 "--index-col", "id"),
        r"study 'tiny' .* was tuned on other data",
    )
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 3


def test_worker_refuses_a_study_it_cannot_join(tmp_path, cli_main):
    import optuna

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    optuna.create_study(storage=url, study_name="made_in_python")
    assert_usage_error(cli_main("worker", "--storage", url, "--study", "nope"),
                       r"there is no study 'nope' .* studies there: \['made_in_python'\]")
    assert_usage_error(cli_main("worker", "--storage", url, "--study", "made_in_python"),
                       r"does not record \['data_path', 'seed', 'search_space'\]")
    assert_usage_error(cli_main("inspect", url, "--study", "nope"), r"there is no study 'nope'")
    missing_db = tmp_path / "absent.db"
    assert_usage_error(run_cli("worker", "--storage", f"sqlite:///{missing_db}", "--study", "x"),
                       r"no study database at")
    assert not missing_db.exists()  # refusing did not create an empty database


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("missing file", r"input file '.*nope\.csv' does not exist"),
        ("malformed csv", r"could not read CSV file .*Expected 3 fields in line 3, saw 5"),
        ("empty csv", r"is empty"),
        ("unknown preset", r"Unknown search-space preset 'fastest'; available presets are \[.*'quick'"),
        ("unknown output type", r"output file '.*out\.xlsx' has an unknown type '\.xlsx'"),
        ("bad json", r"--train-params is not valid JSON"),
        ("bad option value", r"argument --trials: expected a positive integer, got '0'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, case, pattern, cli_main):
    good = tmp_path / "good.csv"
    pd.DataFrame({"a": [1.0, None, 3.0], "b": [1.0, 2.0, None]}).to_csv(good, index=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n4,5,6,7,8\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    args = {
        "missing file": ["impute", tmp_path / "nope.csv", "-o", tmp_path / "out.csv"],
        "malformed csv": ["impute", bad, "-o", tmp_path / "out.csv"],
        "empty csv": ["impute", empty, "-o", tmp_path / "out.csv"],
        "unknown preset": ["tune", good, "--space", "fastest"],
        "unknown output type": ["impute", good, "-o", tmp_path / "out.xlsx"],
        "bad json": ["impute", good, "-o", tmp_path / "out.csv", "--model", "vae", "--train-params", "{epochs: 3"],
        "bad option value": ["impute", good, "-o", tmp_path / "out.csv", "--trials", "0"],
    }[case]
    # The three cases the issue names run as a user would; the others in this process (faster).
    runner = run_cli if case in ("missing file", "malformed csv", "unknown preset") else cli_main
    assert_usage_error(runner(*args), pattern)
    assert not (tmp_path / "out.csv").exists()


def test_verbose_shows_the_traceback(tmp_path):
    proc = run_cli("--verbose", "impute", tmp_path / "nope.csv", "-o", tmp_path / "out.csv")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ciss-autoimpute: error: input file")


def test_storage_passwords_never_reach_the_terminal(cli_main):
    proc = cli_main("inspect", "postgresql://alice:s3cr3t-pw@127.0.0.1:9/studies")
    assert proc.returncode == 2
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout
    assert "alice:***@127.0.0.1" in proc.stderr


# ---------------------------------------------------------------------------- dashboard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_studies_of_a_storage(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'dash.db'}"
    study = optuna.create_study(storage=url, study_name="served")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = _free_port()
    env = {**os.environ, "MPLBACKEND": "Agg"}
    server = subprocess.Popen(
        [sys.executable, "-m", "ciss_autoimpute.cli", "dashboard", url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        payload = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    payload = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.3)
        assert payload is not None, server.stderr.read() if server.poll() is not None else "no answer"
        assert [s["study_name"] for s in payload["study_summaries"]] == ["served"]
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------------------- library hygiene
def test_importing_sets_up_no_logging_and_no_matplotlib():
    code = (
        "import logging, sys\n"
        "import ciss_autoimpute.cli, ciss_autoimpute.plots, ciss_autoimpute.progress\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "assert logging.getLogger('ciss_autoimpute').handlers == []\n"
        "assert 'matplotlib' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_training_progress_draws_one_bar_per_fit_and_closes_it():
    from ciss_autoimpute import ClusterDataset
    from ciss_autoimpute.models.registry import build_model
    from ciss_autoimpute.progress import TrainingProgress
    from ciss_autoimpute.training import RefitConfig, TrainConfig, Trainer

    frame = _tiny_frame().drop(columns=["id", "group"])
    data = ClusterDataset(frame, clusters=np.arange(60) % 2, seed=0, device="cpu").data
    buf = io.StringIO()
    progress = TrainingProgress(file=buf, mininterval=0)
    for _ in range(2):
        model = build_model("vae", data.layout, 2, {"hidden_dims": [8], "latent_dim": 2})
        Trainer(model, TrainConfig(epochs=2, batch_size=32), RefitConfig(max_loops=2, epochs_per_loop=1, patience=5),
                callbacks=[progress], seed=0).fit(data)
        assert progress.bar is None  # closed at the end of the fit
    text = buf.getvalue()
    assert text.count("4/4") >= 2  # 2 initial epochs + 2 loops of 1, for each of the two fits
    assert "loop 2/2" in text and "done (max_loops)" in text

    quiet = io.StringIO()
    model = build_model("vae", data.layout, 2, {"hidden_dims": [8], "latent_dim": 2})
    Trainer(model, TrainConfig(epochs=1), RefitConfig(max_loops=0), callbacks=[TrainingProgress(disable=True,
            file=quiet)], seed=0).fit(data)
    assert quiet.getvalue() == ""
