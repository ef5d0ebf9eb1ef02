"""Resolving where an Optuna study lives — in one place, failing loudly.

There is no silent fallback to an in-memory study: a storage that cannot be opened
raises :class:`~ciss_autoimpute.exceptions.StorageError` naming the (password-masked)
URL and the fix.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from ..exceptions import StorageError

__all__ = ["resolve_storage", "mask_url", "default_artifact_dir"]

logger = logging.getLogger(__name__)

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# user:password@host — the password may itself contain '@' or ':'; the host part has neither '@' nor '/'.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\s/]*)(?P<tail>@[^@/\s]*)")


def mask_url(url: Any) -> str:
    """The URL with any password replaced by ``***`` (safe to print or log)."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('tail')}", str(url))


def _sqlite_url(path: Path) -> str:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise StorageError(
            f"storage: the folder {str(parent)!r} for the SQLite file does not exist; create it first "
            "or point storage at an existing folder."
        )
    return f"sqlite:///{path.expanduser().resolve()}"


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
        URL such as ``postgresql://user:pw@host/db`` (several workers); a file path
        ending in ``.db``/``.sqlite``/``.sqlite3`` (SQLite) or ``.log``/``.journal``/
        ``.jsonl`` (Optuna's journal file, several processes on one machine); or an
        Optuna storage object, used as is.
    heartbeat_interval, grace_period, failed_trial_callback
        Heartbeat settings for database storages (see ``optuna.storages.RDBStorage``).

    Returns
    -------
    None or optuna.storages.BaseStorage

    Raises
    ------
    StorageError
        The storage cannot be opened or reached; the message masks passwords.
    TypeError
        ``storage`` has an unsupported type.
    """
    import optuna

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

    engine_kwargs: dict[str, Any] = {}
    if text.startswith(("postgresql", "mysql")):
        # Fail within seconds on an unreachable host instead of the driver's long default.
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        kwargs["heartbeat_interval"] = heartbeat_interval
        kwargs["grace_period"] = grace_period
        kwargs["failed_trial_callback"] = failed_trial_callback
    try:
        rdb = optuna.storages.RDBStorage(text, engine_kwargs=engine_kwargs or None, **kwargs)
    except ImportError as exc:
        raise StorageError(
            f"storage {mask_url(text)!r} needs a database driver that is not installed ({exc.name or exc}); "
            "install it (e.g. 'pip install psycopg2-binary' for PostgreSQL)."
        ) from None
    except Exception as exc:  # sqlalchemy raises many classes; all mean "cannot open"
        reason = mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise StorageError(
            f"Could not open the study storage {mask_url(text)!r}: {reason}. Check the URL, the host, "
            "the user and password, and that the database exists."
        ) from None
    logger.info("Using study storage %s", mask_url(text))
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


def default_artifact_dir(storage: Any) -> Path | None:
    """Where best-model artifacts go for a persistent storage (beside a SQLite/journal file)."""
    import optuna

    url = None
    if isinstance(storage, optuna.storages.RDBStorage):
        url = str(storage.url) if hasattr(storage, "url") else None
    if isinstance(storage, str):
        url = storage
    if url and url.startswith("sqlite:///") and ":memory:" not in url:
        db = Path(url[len("sqlite:///") :])
        return db.parent / (db.stem + "_artifacts")
    return None
