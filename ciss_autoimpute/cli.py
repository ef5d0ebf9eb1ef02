"""The ``ciss-autoimpute`` command: impute, tune, share a study, inspect it, serve the dashboard.

Every subcommand is a thin layer over the Python API (:func:`~ciss_autoimpute.run_imputation`,
:func:`~ciss_autoimpute.autotune`, :mod:`ciss_autoimpute.plots`). Tables are read and
written as CSV (``.csv``, ``.tsv``, ``.txt``, optionally compressed: ``.csv.gz``) or
Parquet (``.parquet``, ``.pq``; needs pyarrow), chosen by the file's suffix.

Exit codes: 0 success; 1 the work itself failed (e.g. no trial completed); 2 bad usage
or bad input (missing or malformed file, unknown preset, unreachable storage), reported
as one line on stderr (``--verbose`` adds the traceback); 130 interrupted.

Examples
--------
::

    ciss-autoimpute example -o penguins.csv
    ciss-autoimpute impute penguins.csv -o imputed.csv
    ciss-autoimpute tune penguins.csv --space quick --trials 20 --storage sqlite:///studies.db \\
        --study penguins -o imputed.csv --report report/
    ciss-autoimpute worker --storage sqlite:///studies.db --study penguins --trials 10
    ciss-autoimpute worker --storage postgresql://ana@db/studies --study penguins --study-trials 200
    ciss-autoimpute inspect sqlite:///studies.db
    ciss-autoimpute dashboard sqlite:///studies.db --port 8080
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect as _inspect
import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "read_table", "write_table", "study_table", "UsageError"]

PROG = "ciss-autoimpute"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

logger = logging.getLogger("ciss_autoimpute.cli")

_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd"}
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


class UsageError(Exception):
    """Bad usage or bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so ``main`` reports one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------- argument types
def _checked(convert, ok, expected: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``; both fail alike."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_seed = _checked(int, lambda v: v >= 0, "a non-negative integer seed")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive number of seconds")
_proportion = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_port = _checked(int, lambda v: 1 <= v <= 65535, "a port number in 1..65535")


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object such as '{{\"epochs\": 50}}', got {text!r}")
    return value


# ---------------------------------------------------------------------------- tables
def _table_format(path: Path, *, role: str) -> tuple[str, str | None, str | None]:
    """(format, separator, compression) from the file's suffixes."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in _COMPRESSION:
        compression = _COMPRESSION[suffixes[-1]]
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".csv", ".txt"):
        return "csv", ",", compression
    if last == ".tsv":
        return "csv", "\t", compression
    if last in (".parquet", ".pq") and compression is None:
        return "parquet", None, None
    raise UsageError(
        f"{role} file {str(path)!r} has an unknown type {''.join(path.suffixes) or '(no suffix)'!r}; "
        "use .csv, .tsv, .txt (optionally .gz/.bz2/.zip/.xz) or .parquet"
    )


def _require_pyarrow(path: Path) -> None:
    try:
        found = importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked install
        found = False
    if not found:
        raise UsageError(
            f"{str(path)!r}: Parquet files need pyarrow, which is not installed; install it with "
            "'pip install pyarrow' (or 'pip install ciss_autoimpute[parquet]'), or use a .csv file"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def read_table(
    path: str | os.PathLike, *, na_values: Sequence[str] | None = None, index_col: str | None = None
) -> Any:
    """Read a CSV/TSV or Parquet file into a DataFrame, chosen by suffix.

    Parameters
    ----------
    path
        The file.
    na_values
        Extra strings that mean "missing" (CSV only), on top of pandas' defaults
        (empty, ``NA``, ``NaN``, ``null``, ...).
    index_col
        A column to use as the row index: kept out of imputation and written back.

    Raises
    ------
    UsageError
        The file is missing, of an unknown type, unreadable, malformed or empty.
    """
    import pandas as pd

    p = Path(path)
    fmt, sep, compression = _table_format(p, role="input")
    if not p.exists():
        raise UsageError(f"input file {str(p)!r} does not exist")
    if p.is_dir():
        raise UsageError(f"input {str(p)!r} is a folder, not a file")
    if fmt == "parquet":
        _require_pyarrow(p)
        try:
            frame = pd.read_parquet(p, engine="pyarrow")
        except Exception as exc:  # pyarrow raises many classes; all mean "not a readable Parquet file"
            raise UsageError(f"could not read Parquet file {str(p)!r}: {_one_line(exc)}") from None
    else:
        try:
            frame = pd.read_csv(p, sep=sep, compression=compression, na_values=list(na_values or []) or None)
        except pd.errors.EmptyDataError:
            raise UsageError(f"input file {str(p)!r} is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
            raise UsageError(f"could not read CSV file {str(p)!r}: {_one_line(exc)}") from None
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise UsageError(f"input file {str(p)!r} has no data ({frame.shape[0]} rows, {frame.shape[1]} columns)")
    if index_col is not None:
        if index_col not in frame.columns:
            raise UsageError(
                f"--index-col {index_col!r} is not a column of {str(p)!r}; its columns are {list(frame.columns)[:20]}"
            )
        frame = frame.set_index(index_col)
    return frame


def _check_output(path: str | os.PathLike, *, role: str = "output") -> Path:
    """Fail before any training when an output cannot be written."""
    p = Path(path)
    fmt, _, _ = _table_format(p, role=role)
    if fmt == "parquet":
        _require_pyarrow(p)
    _check_parent(p, role=role)
    return p


def _check_parent(p: Path, *, role: str) -> None:
    if p.is_dir():
        raise UsageError(f"{role} {str(p)!r} is a folder; give a file name")
    parent = p.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"the folder {str(parent)!r} for the {role} does not exist; create it first")


def write_table(frame: Any, path: str | os.PathLike, *, index: bool = False) -> Path:
    """Write a DataFrame as CSV/TSV or Parquet (by suffix), atomically.

    The table goes to a temporary file beside ``path`` first and is renamed into place,
    so an interrupted run never leaves half a file.
    """
    p = _check_output(path)
    fmt, sep, compression = _table_format(p, role="output")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            frame.to_parquet(tmp, engine="pyarrow", index=index)
        else:
            frame.to_csv(tmp, sep=sep, index=index, compression=compression)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


# ---------------------------------------------------------------------------- shared helpers
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_space(value: str) -> Any:
    """``--space``: a preset name, or a .json/.yaml/.yml file."""
    from .tuning.search_space import SearchSpace

    if value.lower().endswith((".json", ".yaml", ".yml")) or os.sep in value or "/" in value:
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"search-space file {value!r} does not exist")
        return SearchSpace.from_file(path)
    return SearchSpace.preset(value)


def _storage_file(storage: str) -> Path | None:
    """The local file behind an SQLite or journal storage, or None for a server URL."""
    text = storage.strip()
    if text.startswith("sqlite:///"):
        rest = text[len("sqlite:///"):]
        return None if rest in ("", ":memory:") else Path(rest)
    if "://" not in text and text.lower().endswith(_SQLITE_SUFFIXES + _JOURNAL_SUFFIXES):
        return Path(text)
    return None


def _open_existing_storage(storage: str) -> Any:
    """Resolve a storage that must already exist (inspect, worker, dashboard)."""
    from .tuning.storage import resolve_storage

    file = _storage_file(storage)
    if file is not None and not file.expanduser().is_file():
        # Opening it would silently create an empty database.
        raise UsageError(
            f"no study database at {str(file)!r}; run '{PROG} tune INPUT --storage {storage} ...' first"
        )
    return resolve_storage(storage)


def _study_names(storage: Any) -> list[str]:
    import optuna

    return sorted(optuna.get_all_study_names(storage=storage))


def _load_study(storage_obj: Any, name: str, storage_text: str) -> Any:
    import optuna

    from .tuning.storage import mask_url

    try:
        return optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        names = _study_names(storage_obj)
        raise UsageError(
            f"there is no study {name!r} in {mask_url(storage_text)}; "
            + (f"studies there: {names}" if names else "it holds no study yet")
        ) from None


def _progress(args: argparse.Namespace) -> Any:
    from .progress import TrainingProgress

    return TrainingProgress(disable=_quiet(args))


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _say(args: argparse.Namespace, message: str) -> None:
    """A status line for the user (stderr, so stdout stays clean for data)."""
    if not _quiet(args):
        print(message, file=sys.stderr)


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "na_values": list(args.na_values or []),
        "index_col": args.index_col,
        "n_clusters": args.n_clusters,
        "val_proportion": args.val_proportion,
    }


def _dataset(frame: Any, options: dict[str, Any], *, seed: int, device: str | None) -> Any:
    from .data.dataset import ClusterDataset

    return ClusterDataset(
        frame,
        n_clusters=options.get("n_clusters"),
        val_proportion=options.get("val_proportion", 0.1),
        seed=seed,
        device=device,
    )


# ---------------------------------------------------------------------------- impute
def _cmd_impute(args: argparse.Namespace) -> int:
    output = _check_output(args.output)
    if args.save_model:
        _check_parent(Path(args.save_model), role="model file")
    model_params = _json_object(args.model_params, "--model-params")
    train_params = _json_object(args.train_params, "--train-params")
    frame = read_table(args.input, na_values=args.na_values, index_col=args.index_col)
    if args.multiple is not None and "imputation" in frame.columns:
        raise UsageError(
            "--multiple adds a column named 'imputation', and INPUT already has one; rename that column"
        )
    from .api import run_imputation  # torch and friends: only once the input is known to be readable

    progress = _progress(args)
    kwargs: dict[str, Any] = dict(
        model=args.model,
        seed=args.seed,
        device=args.device,
        time_budget=args.time_budget,
        n_trials=args.trials,
        model_params=model_params,
        train_params=train_params,
        n_clusters=args.n_clusters,
        val_proportion=args.val_proportion,
        show_progress=not _quiet(args),
    )
    # The epoch bar rides along when run_imputation accepts training callbacks.
    if "callbacks" in _inspect.signature(run_imputation).parameters:
        kwargs["callbacks"] = [progress]
    try:
        result = run_imputation(frame, **kwargs)
    finally:
        progress.close()
    if args.multiple is None:
        write_table(result.imputed, output, index=args.index_col is not None)
    else:
        # Multiple imputation: the M completed copies stacked, with an 'imputation' column (1..M).
        if result.imputer is not None:
            stacked = result.imputer.sample(frame, n=args.multiple, seed=args.seed, long=True)
        else:
            import pandas as pd

            stacked = pd.concat([frame.assign(imputation=i) for i in range(1, args.multiple + 1)])
            stacked = stacked[["imputation", *frame.columns]]
        write_table(stacked, output, index=args.index_col is not None)
    n_missing = int(frame.isna().to_numpy().sum())
    if result.imputer is None:
        _say(args, f"nothing was missing; wrote an unchanged copy to {str(output)!r}")
        if args.save_model:
            logger.warning("nothing was missing, so no model was fitted; %s was not written", args.save_model)
        return EXIT_OK
    if args.save_model:
        result.imputer.save(args.save_model)
    _say(
        args,
        f"imputed {n_missing} missing cells in {len(frame)} rows with {_model_label(result.imputer)} "
        f"(validation error {result.validation_error:.4g})"
        + (f", drew {args.multiple} completed copies" if args.multiple is not None else "")
        + f"; wrote {str(output)!r}"
        + (f" and model {args.save_model!r}" if args.save_model else ""),
    )
    return EXIT_OK


def _model_label(imputer: Any) -> str:
    """``vae``, or ``an ensemble of missforest 0.62, knn 0.31`` for an ensemble of trials."""
    members = getattr(imputer, "members_", None)
    if not members:
        return str(imputer.model)
    mix = ", ".join(f"{m.model} {w:.2f}" for m, w in zip(members, imputer.weights_))
    return f"an ensemble of {mix}"


# ---------------------------------------------------------------------------- tune / worker
def _check_study(storage_obj: Any, storage: str, name: str, digest: str, options: dict, seed: int) -> None:
    """Refuse to resume a study made on other data or with other data options (before any work)."""
    import optuna

    from .tuning.storage import mask_url

    try:
        study = optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        return  # a new study
    attrs = study.user_attrs
    if "data_sha256" in attrs:
        if attrs["data_sha256"] != digest:
            raise UsageError(
                f"study {name!r} in {mask_url(storage)} was tuned on other data ({attrs.get('data_path')!r}); "
                "choose another --study name for this file"
            )
        if attrs.get("data_options") != options or attrs.get("seed") != seed:
            raise UsageError(
                f"study {name!r} was created with data options {attrs.get('data_options')} and seed "
                f"{attrs.get('seed')}; resume it with the same options or choose another --study name"
            )
    elif study.trials:
        raise UsageError(
            f"study {name!r} in {mask_url(storage)} already has {len(study.trials)} trials that were not made by "
            f"'{PROG} tune'; choose another --study name"
        )


def _record_study(storage_obj: Any, name: str, data_path: Path, digest: str, options: dict, seed: int) -> None:
    """Create the study (or load it) and record how to rebuild its data, for workers."""
    import optuna

    study = optuna.create_study(storage=storage_obj, study_name=name, direction="minimize", load_if_exists=True)
    study.set_user_attr("data_path", str(data_path))
    study.set_user_attr("data_sha256", digest)
    study.set_user_attr("data_options", options)
    study.set_user_attr("seed", seed)


def _tune_summary(tuned: Any) -> str:
    import optuna

    trials = tuned.study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(1 for t in trials if t.state == s) for s in optuna.trial.TrialState
    }
    states = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    best = tuned.study.best_trial
    text = (
        f"study {tuned.study.study_name!r}: {len(trials)} trials ({states}); best trial #{best.number} "
        f"({best.user_attrs.get('model', '?')}) validation error {tuned.best_value:.4g}"
    )
    if getattr(tuned, "ensemble_weights", None):
        mix = ", ".join(
            f"#{num} {m.model} {w:.2f}"
            for num, w, m in zip(tuned.imputer.trial_numbers_, tuned.imputer.weights_, tuned.imputer.members_)
        )
        text += f"; ensemble ({mix}) validation error {tuned.ensemble_value:.4g}"
    return text


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning.autotune import autotune

    output = _check_output(args.output) if args.output else None
    if args.save_model:
        _check_parent(Path(args.save_model), role="model file")
    if args.report and not Path(args.report).is_dir():
        _check_parent(Path(args.report), role="report folder")
    space = _load_space(args.space)
    data_path = Path(args.input).expanduser().resolve()
    frame = read_table(args.input, na_values=args.na_values, index_col=args.index_col)
    options = _data_options(args)
    study_name = args.study or data_path.name.split(".")[0]
    storage_obj = None
    if args.storage:
        from .tuning.storage import resolve_storage

        # A bad URL or a clash with an existing study fails before the data is clustered.
        storage_obj = resolve_storage(args.storage)
        digest = _file_sha256(data_path)
        _check_study(storage_obj, args.storage, study_name, digest, options, args.seed)
    dataset = _dataset(frame, options, seed=args.seed, device=args.device)
    if storage_obj is not None:
        _record_study(storage_obj, study_name, data_path, digest, options, args.seed)

    progress = _progress(args)
    try:
        tuned = autotune(
            space,
            dataset,
            n_trials=args.trials,
            timeout=args.timeout,
            storage=args.storage,
            study_name=study_name,
            load_if_exists=True,
            seed=args.seed,
            show_progress=not _quiet(args),
            trial_callbacks=[progress],
            ensemble=args.ensemble,
            direction_check=not args.no_direction_check,
        )
    finally:
        progress.close()
    written = []
    if output is not None:
        write_table(tuned.imputed, output, index=args.index_col is not None)
        written.append(str(output))
    if args.save_model:
        tuned.imputer.save(args.save_model)
        written.append(str(args.save_model))
    if args.report:
        from .plots import write_report

        files = write_report(tuned, dataset, args.report)
        written.append(str(files["index"]))
    _say(args, _tune_summary(tuned) + (f"; wrote {', '.join(repr(w) for w in written)}" if written else ""))
    return EXIT_OK


def _worker_storage(args: argparse.Namespace) -> Any:
    """The study's storage, with this worker's heartbeat setting (database URLs)."""
    from .tuning.storage import is_server_url, resolve_storage

    if args.heartbeat is not None and not is_server_url(args.storage):
        raise UsageError(
            f"--heartbeat needs a database URL (postgresql://...); {args.storage!r} keeps no heartbeats"
        )
    file = _storage_file(args.storage)
    if file is not None and not file.expanduser().is_file():
        # Opening it would silently create an empty database.
        raise UsageError(
            f"no study database at {str(file)!r}; run '{PROG} tune INPUT --storage {args.storage} ...' first"
        )
    return resolve_storage(args.storage, heartbeat_interval=args.heartbeat)


def _cmd_worker(args: argparse.Namespace) -> int:
    storage_obj = _worker_storage(args)
    study = _load_study(storage_obj, args.study, args.storage)
    attrs = study.user_attrs
    missing = [k for k in ("data_path", "seed", "search_space") if k not in attrs]
    if missing:
        raise UsageError(
            f"study {args.study!r} does not record {missing}, so a worker cannot rebuild its data; "
            f"create the study with '{PROG} tune INPUT --storage ... --study {args.study}'"
        )
    data_path = Path(attrs["data_path"])
    if not data_path.is_file():
        raise UsageError(
            f"study {args.study!r} was tuned on {str(data_path)!r}, which does not exist on this machine; "
            "make the same file available at that path"
        )
    if "data_sha256" in attrs and _file_sha256(data_path) != attrs["data_sha256"]:
        raise UsageError(f"{str(data_path)!r} changed since study {args.study!r} was created; refusing to mix data")
    from .tuning.autotune import autotune, default_sampler
    from .tuning.search_space import SearchSpace

    options = dict(attrs.get("data_options") or {})
    seed = int(attrs["seed"])
    # A study made by autotune() in Python records its holdout settings in the fingerprint.
    holdout = (attrs.get("data_fingerprint") or {}).get("holdout") or {}
    if "val_proportion" not in options and "val_proportion" in holdout:
        options["val_proportion"] = holdout["val_proportion"]
    data_seed = int(holdout.get("seed", seed))
    space = SearchSpace.from_dict(attrs["search_space"])
    frame = read_table(data_path, na_values=options.get("na_values"), index_col=options.get("index_col"))
    dataset = _dataset(frame, options, seed=data_seed, device=args.device)
    # Workers started together must not propose the same trials: each seeds its own sampler.
    sampler_seed = args.sampler_seed if args.sampler_seed is not None else (seed * 1_000_003 + os.getpid()) % 2**31
    n_trials = args.trials
    if n_trials is None and args.study_trials is None and args.timeout is None:
        n_trials = 10

    progress = _progress(args)
    try:
        tuned = autotune(
            space,
            dataset,
            n_trials=n_trials,
            timeout=args.timeout,
            storage=storage_obj,
            study_name=args.study,
            load_if_exists=True,
            sampler=default_sampler(sampler_seed),
            seed=seed,
            show_progress=not _quiet(args),
            trial_callbacks=[progress],
            study_trials=args.study_trials,
            artifact_dir=args.artifact_dir,
        )
    finally:
        progress.close()
    _say(args, _tune_summary(tuned))
    return EXIT_OK


# ---------------------------------------------------------------------------- inspect
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def _format_table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def study_table(study: Any, *, top: int | None = 10) -> str:
    """The study's trials as a text table, best first (completed by value, then the others)."""
    trials = study.get_trials(deepcopy=False)

    def key(t: Any) -> tuple:
        value = t.value if t.value is not None else float("inf")
        return (_STATE_ORDER.get(t.state.name, 5), value, t.number)

    chosen = sorted(trials, key=key)
    if top:
        chosen = chosen[:top]
    rows = []
    for t in chosen:
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.duration is not None:
            seconds = t.duration.total_seconds()
        note = str(t.user_attrs.get("fail_reason", ""))
        rows.append([
            str(t.number),
            t.state.name.lower(),
            f"{t.value:.4g}" if t.value is not None else "-",
            str(t.user_attrs.get("model", "-")),
            f"{float(seconds):.1f}" if seconds is not None else "-",
            note if len(note) <= 60 else note[:57] + "...",
        ])
    return _format_table(rows, ["number", "state", "value", "model", "seconds", "note"], right={0, 2, 4})


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .tuning.storage import mask_url

    storage_obj = _open_existing_storage(args.storage)
    names = _study_names(storage_obj)
    if args.study is not None:
        selected = [args.study] if args.study in names else None
        if selected is None:
            _load_study(storage_obj, args.study, args.storage)  # raises the "no such study" error
    else:
        selected = names
    if not selected:
        print(f"no study in {mask_url(args.storage)}")
        return EXIT_OK
    blocks = []
    for name in selected:
        study = _load_study(storage_obj, name, args.storage)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        head = f"study {name!r}: {len(trials)} trials, {len(complete)} complete"
        if complete:
            best = study.best_trial
            head += f"; best #{best.number} ({best.user_attrs.get('model', '?')}) value {best.value:.4g}"
        shown = "" if not args.top or len(trials) <= args.top else f" (best {args.top} shown; --top 0 for all)"
        blocks.append(head + shown + "\n" + study_table(study, top=args.top))
    print("\n\n".join(blocks))
    return EXIT_OK


# ---------------------------------------------------------------------------- dashboard / example
def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .tuning.storage import default_artifact_dir, mask_url

    storage_obj = _open_existing_storage(args.storage)
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError(
            "the dashboard needs optuna-dashboard; install it with 'pip install optuna-dashboard'"
        ) from None
    artifact_store = None
    file = _storage_file(args.storage)
    if file is not None and file.suffix.lower() in _SQLITE_SUFFIXES:
        from optuna.artifacts import FileSystemArtifactStore

        folder = default_artifact_dir(f"sqlite:///{file.expanduser().resolve()}")
        if folder is not None and folder.is_dir():
            artifact_store = FileSystemArtifactStore(str(folder))
    _say(args, f"serving optuna-dashboard for {mask_url(args.storage)} at http://{args.host}:{args.port}/ "
               "(Ctrl-C stops)")
    try:
        optuna_dashboard.run_server(storage_obj, host=args.host, port=args.port, artifact_store=artifact_store)
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop
        _say(args, "dashboard stopped")
    except OSError as exc:
        raise UsageError(
            f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc}); pick another --port"
        ) from None
    return EXIT_OK


def _cmd_example(args: argparse.Namespace) -> int:
    from .datasets import load_example

    frame = load_example()
    if args.output == "-":
        frame.to_csv(sys.stdout, index=False)
        return EXIT_OK
    path = write_table(frame, args.output)
    _say(
        args,
        f"wrote the Palmer penguins example ({frame.shape[0]} rows x {frame.shape[1]} columns, "
        f"{int(frame.isna().to_numpy().sum())} missing cells) to {str(path)!r}",
    )
    return EXIT_OK


# ---------------------------------------------------------------------------- parser
def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--na-values", action="append", metavar="TEXT",
                   help="an extra string meaning 'missing' in a CSV, besides empty, NA, NaN, null, ... "
                        "(repeat for several: --na-values ? --na-values -999)")
    g.add_argument("--index-col", metavar="COLUMN", help="a column to keep as the row index (not imputed)")
    g.add_argument("--n-clusters", type=_positive_int, metavar="K",
                   help="cluster rows on their missingness with KMeans into K clusters (default: Leiden)")
    g.add_argument("--val-proportion", type=_proportion, default=0.1, metavar="P",
                   help="share of observed cells held out to pick the best model (default 0.1)")
    g.add_argument("--seed", type=_seed, default=0, help="seed of everything random (default 0)")
    g.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ciss-autoimpute`` (exposed for documentation tools)."""
    from . import __version__

    common = _Parser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="log progress details and show the traceback of errors")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="no progress bars or status lines; errors only")

    parser = _Parser(
        prog=PROG,
        description="Impute missing cells of a table with deep generative models tuned by Optuna.",
        parents=[common],
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("impute", parents=[common], help="fill the missing cells of a table",
                       description="Fill every missing cell of INPUT and write the completed table to OUTPUT.")
    p.add_argument("input", metavar="INPUT", help="a .csv/.tsv/.parquet file; empty cells and NA mean missing")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="where to write the completed table")
    p.add_argument("--model", default="auto",
                   help="'auto' (a short search over the quick preset's families, possibly an ensemble; the default) or a family: cissvae, vae, "
                        "miwae, notmiwae, gain, mida, mean, em, knn, mice, missforest")
    p.add_argument("--time-budget", type=_positive_float, metavar="SECONDS",
                   help="seconds for --model auto (default 120)")
    p.add_argument("--trials", type=_positive_int, metavar="N", help="trials for --model auto (default 12)")
    p.add_argument("--model-params", metavar="JSON", help="family hyperparameters, e.g. '{\"latent_dim\": 8}'")
    p.add_argument("--train-params", metavar="JSON",
                   help="training settings, e.g. '{\"epochs\": 50, \"max_loops\": 2}' (single family only)")
    p.add_argument("--save-model", metavar="PATH", help="also save the fitted imputer (load with Imputer.load)")
    p.add_argument("--multiple", type=_positive_int, metavar="M",
                   help="multiple imputation: write M completed copies drawn from the model, stacked, with an "
                        "'imputation' column (1..M)")
    _add_data_options(p)
    p.set_defaults(func=_cmd_impute)

    p = sub.add_parser("tune", parents=[common], help="tune model family and hyperparameters with Optuna",
                       description="Run an Optuna study over a search space on INPUT; optionally keep it in a "
                                   "storage other machines can join with 'worker'.")
    p.add_argument("input", metavar="INPUT", help="a .csv/.tsv/.parquet file")
    p.add_argument("--space", default="default", metavar="NAME|FILE",
                   help="a preset (default, quick, mnar, cissvae) or a .json/.yaml search-space file "
                        "(default: default)")
    p.add_argument("--trials", type=_positive_int, default=20, metavar="N", help="trials to run now (default 20)")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="stop starting trials after this long")
    p.add_argument("--storage", metavar="URL",
                   help="sqlite:///file.db, a .db or journal file, or a database URL (default: in memory)")
    p.add_argument("--study", metavar="NAME",
                   help="study name; an existing study is resumed (default: the input file's name)")
    p.add_argument("--ensemble", type=_nonnegative_int, default=8, metavar="K",
                   help="average up to K of the best trials when a weighted mix beats the best one on the "
                        "holdout (greedy ensemble selection); 0 keeps the best trial alone (default 8)")
    p.add_argument("--no-direction-check", action="store_true",
                   help="keep self-masking not-MIWAE trials whose learned missingness direction contradicts the "
                        "one the observed data calls (by default they are left out of the best trial and ensemble)")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help="write the completed table here (the ensemble's, or the best trial's)")
    p.add_argument("--report", metavar="DIR", help="write PNG figures and index.md about the study here")
    p.add_argument("--save-model", metavar="PATH",
                   help="save the fitted imputer (the ensemble, or the best trial's; load with Imputer.load)")
    _add_data_options(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("worker", parents=[common], help="join an existing study and run more trials",
                       description="Run trials for a study created by 'tune' with a shared storage; the data "
                                   "file must exist at the path the study recorded.")
    p.add_argument("--storage", required=True, metavar="URL", help="the study's storage")
    p.add_argument("--study", required=True, metavar="NAME", help="the study's name")
    p.add_argument("--trials", type=_positive_int, metavar="N",
                   help="trials this worker runs (default 10, or no limit with --study-trials/--timeout)")
    p.add_argument("--study-trials", type=_positive_int, metavar="N",
                   help="stop when the study holds N finished (complete or pruned) trials, counting every "
                        "worker's; the trial of a worker that died is run again and counted once")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="stop starting trials after this long")
    p.add_argument("--device", help="torch device, one worker per GPU: cuda:0, cuda:1, ... (default: cuda when "
                                    "available)")
    p.add_argument("--artifact-dir", metavar="DIR",
                   help="folder for best-model files, shared by all workers (default: the one the study recorded)")
    p.add_argument("--heartbeat", type=_positive_int, metavar="SECONDS",
                   help="database URLs: seconds between heartbeats of a running trial; a trial silent for twice "
                        "that long is failed and run again (default 10)")
    p.add_argument("--sampler-seed", type=_seed, metavar="SEED",
                   help="seed of this worker's sampler (default: derived from the process id)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("inspect", parents=[common], help="show the best trials of the studies in a storage")
    p.add_argument("storage", metavar="STORAGE", help="sqlite:///file.db, a .db or journal file, or a database URL")
    p.add_argument("--study", metavar="NAME", help="only this study (default: every study)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="trials to list per study, 0 for all (default 10)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("dashboard", parents=[common], help="serve optuna-dashboard for a storage")
    p.add_argument("storage", metavar="STORAGE", help="sqlite:///file.db, a .db or journal file, or a database URL")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("example", parents=[common], help="write the shipped example table (Palmer penguins)")
    p.add_argument("-o", "--output", default="penguins.csv", metavar="FILE",
                   help="file to write, .csv or .parquet; '-' for stdout (default penguins.csv)")
    p.set_defaults(func=_cmd_example)
    return parser


# ---------------------------------------------------------------------------- main
class _TqdmHandler(logging.StreamHandler):
    """Writes log records through ``tqdm.write`` so they do not tear open progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:  # pragma: no cover - as logging.StreamHandler does
            raise
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    """Route log records and warnings to stderr through tqdm, so they do not tear progress bars."""
    import optuna

    level = logging.ERROR if quiet else (logging.INFO if verbose else logging.WARNING)
    handler = _TqdmHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _TqdmHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Warnings become one log line each ("WARNING: ClusteringFallbackWarning: ..."), not two
    # lines of file name and source code.
    warnings_logger = logging.getLogger("py.warnings")

    def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                     line: Any = None) -> None:
        warnings_logger.warning("%s: %s", category.__name__, message)

    warnings.showwarning = show_warning
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)


def _report_error(exc: BaseException, verbose: bool, *, name_class: bool) -> None:
    message = _one_line(exc)
    if "://" in message:  # only URLs carry passwords (and the import costs a second)
        from .tuning.storage import mask_url

        message = mask_url(message)
    if verbose:
        traceback.print_exc(file=sys.stderr)
    prefix = f"{type(exc).__name__}: " if name_class else ""
    print(f"{PROG}: error: {prefix}{message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ciss-autoimpute`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    try:
        _configure_logging(verbose, _quiet(args))
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ValueError, TypeError, OSError, ImportError) as exc:
        # Bad input reaches the library's own checks as ValueError/TypeError (StorageError and
        # ModelFileError included), unreadable files as OSError, missing extras as ImportError.
        _report_error(exc, verbose, name_class=False)
        return EXIT_USAGE
    except Exception as exc:
        _report_error(exc, verbose, name_class=True)
        if not verbose:
            print(f"{PROG}: rerun with --verbose for the traceback", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
