"""Resolving where an Optuna study lives — in one place, failing loudly.

There is no silent fallback to an in-memory study: a storage that cannot be opened
raises :class:`~ciss_autoimpute.exceptions.StorageError` naming the (password-masked)
URL and the fix.

Database servers (PostgreSQL, MySQL) get heartbeats by default: every running trial
writes a heartbeat, and a trial whose worker died (killed, preempted, out of memory)
is marked failed once its heartbeat is older than the grace period and is queued
again for another worker (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from ..exceptions import StorageError

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_MAX_RETRY",
    "default_artifact_dir",
    "is_server_url",
    "mask_url",
    "resolve_storage",
    "storage_url",
]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a running trial on a database server. A trial of a
#: dead worker is failed and retried after twice this long (the default grace period).
DEFAULT_HEARTBEAT_INTERVAL = 10
#: How often a trial whose worker died is queued again; a configuration that kills every
#: worker it lands on (e.g. out of memory) must not take the whole fleet down with it.
DEFAULT_MAX_RETRY = 2

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# user:password@host — the password may itself contain '@' or ':'; the host part has neither '@' nor '/'.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\s/]*)(?P<tail>@[^@/\s]*)")


def mask_url(url: Any) -> str:
    """The URL with any password replaced by ``***`` (safe to print or log).

    Examples
    --------
    >>> mask_url("postgresql://ana:s3cret@db.example.org:5432/studies")
    'postgresql://ana:***@db.example.org:5432/studies'
    """
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('tail')}", str(url))


def is_server_url(url: Any) -> bool:
    """Whether ``url`` names a database server (anything with ``://`` but SQLite).

    Examples
    --------
    >>> is_server_url("postgresql+psycopg2://u:p@127.0.0.1/db"), is_server_url("sqlite:///s.db")
    (True, False)
    """
    text = str(url).strip()
    return "://" in text and not text.lower().startswith("sqlite")


def storage_url(storage: Any) -> str | None:
    """The URL (or journal file path) behind a storage argument or object, if any.

    The password is still in it: mask it with :func:`mask_url` before showing it.
    """
    import optuna

    if isinstance(storage, os.PathLike):
        storage = os.fspath(storage)
    if isinstance(storage, str):
        return storage.strip()
    if isinstance(storage, optuna.storages.RDBStorage):
        return str(storage.url)
    if isinstance(storage, optuna.storages.JournalStorage):
        backend = getattr(storage, "_backend", None)
        path = getattr(backend, "_file_path", None)  # JournalFileBackend keeps its file here
        return str(path) if path else None
    return None


def _sqlite_url(path: Path) -> str:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise StorageError(
            f"storage: the folder {str(parent)!r} for the SQLite file does not exist; create it first "
            "or point storage at an existing folder."
        )
    return f"sqlite:///{path.expanduser().resolve()}"


def _check_seconds(value: Any, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative whole number of seconds or None, got {value!r}.")


def resolve_storage(
    storage: Any,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    failed_trial_callback: Any = None,
) -> Any:
    """Turn the user's ``storage`` argument into what ``optuna.create_study`` takes.

    Parameters
    ----------
    storage
        ``None`` (in memory, this process only); an ``sqlite:///path`` URL; a database
        URL such as ``postgresql://user:pw@host/db`` (several workers, several machines);
        a file path ending in ``.db``/``.sqlite``/``.sqlite3`` (SQLite) or ``.log``/
        ``.journal``/``.jsonl`` (Optuna's journal file, several processes on one
        machine); or an Optuna storage object, used as is.
    heartbeat_interval
        Seconds between heartbeats of a running trial (database URLs only). ``None``
        means :data:`DEFAULT_HEARTBEAT_INTERVAL` for a database server and no heartbeat
        for SQLite; ``0`` turns heartbeats off.
    grace_period
        Seconds without a heartbeat after which a running trial counts as dead;
        ``None`` is twice the interval.
    failed_trial_callback
        Called with ``(study, trial)`` for each trial failed for a stale heartbeat.
        Default: :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` with
        ``max_retry=DEFAULT_MAX_RETRY``, which queues the trial again for another worker.

    Returns
    -------
    None or optuna.storages.BaseStorage

    Raises
    ------
    StorageError
        The storage cannot be opened or reached (within seconds for an unreachable
        server); the message masks passwords.
    TypeError
        ``storage`` has an unsupported type.
    ValueError
        Bad heartbeat settings, or heartbeats asked of a storage that has none.

    Examples
    --------
    >>> resolve_storage(None) is None
    True
    >>> resolve_storage("postgresql://u:pw@127.0.0.1:1/db")  # doctest: +SKIP
    Traceback (most recent call last):
    StorageError: Could not open the study storage 'postgresql://u:***@127.0.0.1:1/db': ...
    """
    import optuna

    _check_seconds(heartbeat_interval, "heartbeat_interval")
    _check_seconds(grace_period, "grace_period")
    if grace_period == 0:
        raise ValueError("grace_period must be a positive number of seconds or None (twice the interval), got 0.")
    if storage is None:
        return None
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, os.PathLike):
        storage = os.fspath(storage)
    if not isinstance(storage, str):
        raise TypeError(
            f"storage must be None, a URL string, a file path or an Optuna storage, got {type(storage).__name__}."
        )
    text = storage.strip()
    if not text:
        raise StorageError("storage is an empty string; pass None for an in-memory study or a URL/path.")

    if "://" not in text:
        path = Path(text)
        lower = text.lower()
        if lower.endswith(_JOURNAL_SUFFIXES):
            if heartbeat_interval:
                raise ValueError(
                    f"heartbeat_interval={heartbeat_interval} was given for the journal file {text!r}, but journal "
                    "files keep no heartbeats; use a database URL (postgresql://...) to survive killed workers, "
                    "or leave heartbeat_interval=None."
                )
            return _journal_storage(path)
        if lower.endswith(_SQLITE_SUFFIXES):
            text = _sqlite_url(path)
        else:
            raise StorageError(
                f"storage={text!r} is neither a URL nor a file path with a known suffix; use 'sqlite:///file.db', "
                f"a path ending in {_SQLITE_SUFFIXES + _JOURNAL_SUFFIXES}, or a database URL."
            )
    elif text.startswith("sqlite:///") and text != "sqlite:///:memory:":
        _sqlite_url(Path(text[len("sqlite:///") :]))

    server = is_server_url(text)
    engine_kwargs: dict[str, Any] = {}
    if text.startswith(("postgresql", "mysql")):
        # Fail within seconds on an unreachable host instead of the driver's long default.
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
        engine_kwargs["pool_pre_ping"] = True
    interval = heartbeat_interval
    if interval is None and server:
        interval = DEFAULT_HEARTBEAT_INTERVAL
    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are flagged experimental by Optuna; they are
        # exactly what several workers need, so the flag is noise for our users.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if interval:
            kwargs["heartbeat_interval"] = interval
            kwargs["grace_period"] = grace_period
            kwargs["heartbeat_stale_trial_callback"] = (
                failed_trial_callback
                if failed_trial_callback is not None
                else optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=DEFAULT_MAX_RETRY)
            )
        try:
            rdb = optuna.storages.RDBStorage(text, engine_kwargs=engine_kwargs or None, **kwargs)
        except ImportError as exc:
            raise StorageError(
                f"storage {mask_url(text)!r} needs a database driver that is not installed ({exc.name or exc}); "
                "install it (e.g. 'pip install psycopg2-binary' for PostgreSQL)."
            ) from None
        except Exception as exc:  # sqlalchemy raises many classes; all mean "cannot open"
            reason = mask_url(" ".join(str(exc).split("\n")[0].split()) if str(exc) else type(exc).__name__)
            raise StorageError(
                f"Could not open the study storage {mask_url(text)!r}: {reason}. Check the URL, the host, "
                "the user and password, and that the database exists."
            ) from None
    logger.info(
        "Using study storage %s%s", mask_url(text), f" (heartbeat every {interval} s)" if interval else ""
    )
    return rdb


def _journal_storage(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise StorageError(
            f"storage: the folder {str(parent)!r} for the journal file does not exist; create it first."
        )
    return JournalStorage(JournalFileBackend(str(path.expanduser().resolve())))


def default_artifact_dir(storage: Any, study_name: str | None = None) -> Path | None:
    """Where best-model artifacts go by default for a persistent storage.

    Beside an SQLite or journal file (``studies.db`` -> ``studies_artifacts/``); for a
    database server, ``<study_name>_artifacts/`` in the current folder (give every worker
    the same shared folder with ``artifact_dir``); ``None`` for an in-memory study.
    """
    url = storage_url(storage)
    if not url:
        return None
    if url.startswith("sqlite:///"):
        if ":memory:" in url:
            return None
        db = Path(url[len("sqlite:///") :])
        return db.parent / (db.stem + "_artifacts")
    if "://" not in url:
        if url.lower().endswith(_SQLITE_SUFFIXES + _JOURNAL_SUFFIXES):
            file = Path(url).expanduser()
            return file.parent / (file.stem + "_artifacts")
        return None
    if is_server_url(url) and study_name:
        return Path.cwd() / f"{study_name}_artifacts"
    return None
