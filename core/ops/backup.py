"""`clara admin backup DEST` and `clara admin restore SRC`: a whole workbench in one folder.

What a backup holds (DEST, made by core.artifacts: built in a staging folder next to DEST and
renamed into place when complete, described by `manifest.json`):
- `database/`: a consistent snapshot of the database (core/ops/backup_database.py: SQLite's
  online backup API, or a COPY export of every table in one PostgreSQL snapshot);
- `vectors/`: the chunk vectors, exported through Chroma's client, embedded or server
  (core/ops/backup_vectors.py);
- `data/`: the data dir's files: the auth secret, adapters, dataset versions, exports, models
  built here (demo model, ONNX builds, tuned embedding models), merged models, job folders
  (checkpoints the job rows point at: a retry resumes from them) and uploaded originals.
  The graph is the `corpus_edges` table (a Neo4j mirror is not copied).
What it leaves out, each named in the manifest's `excluded`: logs (`--logs` includes them),
the embedded Chroma folder and the SQLite files (taken above instead), builds in progress
and what killed builds left (staging folders), locks, half-written temporary files, deleted
adapters not yet removed, and the cache dir (derived files, rebuilt on use).

The manifest lists the sha256 and size of every file, the engine, the schema revision, the
library versions, the source data dir and the creation time; `manifest.json.sha256` beside
it (`sha256sum -c` reads it) lets restore tell a truncated or altered manifest. A backup
holds the auth secret and every password hash: its folders are 0700 and its files 0600.

Taken from a running workbench, each store is consistent in itself; the database is taken
first, so whatever its rows name was there before the files were copied (except what was
deleted during the backup). Stop the workers for a backup that must match to the second.

Restore verifies the whole backup before it writes anything (the manifest against its
sha256, then every file present, no file unlisted, sizes, then every sha256) and names the
first bad file. It then checks that the target (data dir, database, vector store) is empty;
with `force`, what is in the way is moved aside (`replaced-by-restore-<time>` in the data
dir, next to an outside SQLite file or Chroma folder, a PostgreSQL schema
`clara_replaced_<time>`), never deleted. Files are copied while their sha256 is checked
again, then the vectors, then the database (upgraded to the newest revision, paths rebased
onto the new data dir); a failure undoes what this restore made and nothing else.

Both are audited: a backup in its own database, a restore in the restored database (a refused
one only where the target already holds a workbench's audit log: an empty target stays
empty). Both need `system:backup`; the restoring user must be an enabled user of the backup
with it, since the backup's users are the ones the restored workbench has.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from core.artifacts import (
    MANIFEST,
    STAGING_PREFIX,
    file_sha256,
    library_versions,
    staged_dir,
    write_manifest,
)
from core.audit import audited, record
from core.config import SECRET_FILE, Settings, mask_url
from core.db import current_revision
from core.errors import ClaraError
from core.ops import backup_database as db
from core.ops import backup_vectors as vectors
from core.permissions import PermissionDenied, Principal, require

KIND = "clara-backup"
FORMAT = "clara-backup/1"
SIDECAR = MANIFEST + ".sha256"
DATABASE_DIR, VECTORS_DIR, DATA_DIR = "database", "vectors", "data"
REPLACED_PREFIX = "replaced-by-restore-"
PERMISSION = "system:backup"
SENSITIVE = (
    "This backup holds the auth secret (it signs sign-in forms and API tokens), every "
    "password hash and every document: keep it as safe as the secret itself."
)
_BLOCK = 1 << 20

Progress = Callable[[str, int, int | None, str], None]


class BackupError(ClaraError):
    """A backup cannot be made or restored as asked."""


class BackupInvalid(BackupError):
    """The backup is incomplete or altered; the message names the first bad file."""


class TargetNotEmpty(BackupError):
    """The data dir, database or vector store to restore into holds something already."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    engine: str
    schema_revision: str | None
    files: int
    bytes: int
    vectors: int
    excluded: list[dict[str, str]]


@dataclass(frozen=True)
class RestoreReport:
    data_dir: Path
    engine: str
    backup_created_at: str
    backup_schema_revision: str
    schema_revision: str | None
    files: int
    bytes: int
    vectors: int
    paths_rebased: int
    moved_aside: list[str] = field(default_factory=list)


# Backup ----------------------------------------------------------------------------------


def create_backup(
    engine: Engine,
    actor: Principal,
    settings: Settings,
    dest: Path,
    *,
    include_logs: bool = False,
    progress: Progress | None = None,
) -> BackupReport:
    """Write a backup of this workbench into the new folder `dest`."""
    dest = Path(dest).expanduser().resolve()
    with audited(engine, actor, "system.backup", target=str(dest)) as ctx:
        require(actor, PERMISSION)
        _check_destination(dest, settings)
        with staged_dir(dest) as staging:
            staging.chmod(0o700)
            database = db.snapshot(engine, staging / DATABASE_DIR, progress)
            vector_section = vectors.export_vectors(settings, staging / VECTORS_DIR, progress)
            files, skipped = _data_files(settings, engine, include_logs)
            modes, vanished = _copy_data(files, staging / DATA_DIR, progress)
            manifest = write_manifest(
                staging,
                KIND,
                format=FORMAT,
                created_by=actor.username,
                engine=database["engine"],
                schema_revision=database["schema_revision"],
                source={
                    "data_dir": str(settings.data_path),
                    "database": mask_url(settings.effective_database_url),
                    "host": platform.node(),
                },
                database=database,
                vectors=vector_section,
                graph="in the database (corpus_edges); a Neo4j mirror is not copied",
                auth_secret=_secret_note(settings),
                sensitive=SENSITIVE,
                excluded=skipped,
                vanished=vanished,
                file_modes=modes,
                library_versions=_versions(),
            )
            _write_sidecar(staging)
            _restrict(staging)
        listed = manifest["files"]
        report = BackupReport(
            path=dest,
            engine=database["engine"],
            schema_revision=database["schema_revision"],
            files=len(listed),
            bytes=sum(f["bytes"] for f in listed.values()),
            vectors=vector_section.get("count", 0),
            excluded=skipped,
        )
        ctx.detail.update(
            files=report.files,
            bytes=report.bytes,
            revision=report.schema_revision,
            logs=include_logs,
        )
    return report


def _check_destination(dest: Path, settings: Settings) -> None:
    for inside in (settings.data_path, settings.effective_chroma_path):
        if _under(dest, inside):
            raise BackupError(
                f"{dest} is inside {inside}: put the backup outside the data dir (the next "
                "backup would copy it, and a lost disk would take both)"
            )


def _secret_note(settings: Settings) -> str:
    if settings.auth_secret is not None:
        return "configured by CLARA_AUTH_SECRET: not in the backup, keep it with the configuration"
    return f"{DATA_DIR}/{SECRET_FILE}"


def _versions() -> dict[str, str | None]:
    versions = library_versions()
    for name in ("chromadb", "sqlalchemy", "alembic", "psycopg"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _skip_rules(settings: Settings, engine: Engine, include_logs: bool) -> dict[Path, str]:
    """Paths under the data dir left out on purpose, with why."""
    root = settings.data_path
    rules: dict[Path, str] = {
        settings.effective_chroma_path: f"the vector index: exported through Chroma into "
        f"{VECTORS_DIR}/",
    }
    if not include_logs:
        rules[root / "logs"] = "log files: not needed to restore (--logs includes them)"
    if db.engine_kind(engine) == "sqlite":
        base = db.sqlite_file(engine)
        for suffix in ("", "-wal", "-shm", "-journal"):
            rules[base.with_name(base.name + suffix)] = (
                f"the database files: a consistent snapshot is in {DATABASE_DIR}/"
            )
    return rules


# Names skipped wherever they are: (test, what, why).
_SKIPPED_NAMES: tuple[tuple[Callable[[str], bool], str, str], ...] = (
    (
        lambda n: n.startswith(STAGING_PREFIX),
        f"{STAGING_PREFIX}*",
        "builds in progress and what killed builds left",
    ),
    (lambda n: n.startswith(".deleted-"), ".deleted-*", "deleted adapters not yet removed"),
    (lambda n: n.startswith(".") and n.endswith(".lock"), ".*.lock", "build locks"),
    (lambda n: n.startswith(".") and n.endswith(".tmp"), ".*.tmp", "files being written"),
)


def _data_files(
    settings: Settings, engine: Engine, include_logs: bool
) -> tuple[list[tuple[Path, str, int]], list[dict[str, str]]]:
    """(source, relative path, size) of every file to copy, and the rules of what is left out.

    Symbolic links are followed (a backup holds the content, not a pointer outside it)."""
    root = settings.data_path
    rules = _skip_rules(settings, engine, include_logs)
    excluded = [{"what": what, "why": why} for _test, what, why in _SKIPPED_NAMES]
    for why in dict.fromkeys(rules.values()):
        shown = [_shown(path, root) for path, reason in rules.items() if reason == why]
        excluded.append({"what": ", ".join(shown), "why": why})
    excluded.append({"what": "the cache dir", "why": "derived files, rebuilt on use"})
    files: list[tuple[Path, str, int]] = []
    seen: set[str] = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        here = Path(folder)
        dirnames[:] = sorted(n for n in dirnames if not _skipped(here / n, rules))
        for name in sorted(filenames):
            path = here / name
            if _skipped(path, rules):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue  # gone between the listing and now
            if stat.S_ISREG(info.st_mode):
                files.append((path, path.relative_to(root).as_posix(), info.st_size))
    return files, excluded


def _shown(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if _under(path, root) else str(path)


def _skipped(path: Path, rules: dict[Path, str]) -> bool:
    return path in rules or any(test(path.name) for test, _what, _why in _SKIPPED_NAMES)


def _copy_data(
    files: list[tuple[Path, str, int]], folder: Path, progress: Progress | None
) -> tuple[dict[str, int], list[str]]:
    """Copy the files; returns their modes and the files that vanished meanwhile."""
    total = sum(size for _p, _r, size in files)
    done = 0
    modes: dict[str, int] = {}
    vanished: list[str] = []
    for source, rel, size in files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(source.stat().st_mode)
            shutil.copyfile(source, target)
        except FileNotFoundError:
            vanished.append(rel)  # removed by the workbench while we copied (a cleanup)
            continue
        modes[f"{DATA_DIR}/{rel}"] = mode
        done += size
        if progress:
            progress("files", done, total, rel)
    return modes, vanished


def _write_sidecar(folder: Path) -> None:
    digest = file_sha256(folder / MANIFEST)
    (folder / SIDECAR).write_text(f"{digest}  {MANIFEST}\n", encoding="ascii")


def _restrict(folder: Path) -> None:
    for here, _dirs, names in os.walk(folder):
        os.chmod(here, 0o700)
        for name in names:
            os.chmod(Path(here) / name, 0o600)


# Verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBackup:
    """A backup whose every file matched its manifest (made only by `verify_backup`)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def engine(self) -> str:
        return self.manifest["engine"]

    def file(self, rel: str) -> Path:
        return self.path / rel

    def opener(self, folder: str) -> Callable[[str], Any]:
        """Opens a file of `folder` for reading, its sha256 checked again when done."""
        return lambda name: _checked(
            self.file(f"{folder}/{name}"), self.manifest["files"][f"{folder}/{name}"]
        )

    def principal(self, username: str) -> Principal:
        """The enabled user `username` of the backed-up workbench (restores act as them)."""
        name = username.strip().lower()
        for user in self._users():
            if user["username"] == name and not user["disabled"]:
                return Principal(user["username"], user["role"], user["id"], user["full_name"])
        raise PermissionDenied(username, "not an enabled user of the backup", PERMISSION)

    def _users(self) -> Iterator[dict[str, Any]]:
        section = self.manifest["database"]
        if self.engine == "sqlite":
            uri = self.file(f"{DATABASE_DIR}/{section['file']}").as_uri() + "?mode=ro&immutable=1"
            conn = sqlite3.connect(uri, uri=True)
            try:
                rows = conn.execute("SELECT id, username, role, full_name, disabled FROM users")
                for uid, username, role, full_name, disabled in rows.fetchall():
                    yield {
                        "id": uid,
                        "username": username,
                        "role": role,
                        "full_name": full_name or "",
                        "disabled": bool(disabled),
                    }
            finally:
                conn.close()
            return
        users = self.file(f"{DATABASE_DIR}/{section['tables']['users']['file']}")
        with users.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield {
                    "id": int(row["id"]),
                    "username": row["username"],
                    "role": row["role"],
                    "full_name": row.get("full_name") or "",
                    "disabled": row["disabled"] == "t",
                }


def verify_backup(src: Path, progress: Progress | None = None) -> VerifiedBackup:
    """Check the whole backup against its manifest; raise BackupInvalid naming the first bad
    file. Reads only."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise BackupInvalid(f"{src} is not a folder: give the backup's folder")
    manifest = _intact_manifest(src)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    problem = _first_layout_problem(src, listed)
    if problem:
        raise BackupInvalid(f"backup {src}: {problem}; nothing was restored")
    total, done = sum(f["bytes"] for f in listed.values()), 0
    for rel in sorted(listed):
        if file_sha256(src / rel) != listed[rel]["sha256"]:
            raise BackupInvalid(
                f"backup {src}: {rel}: sha256 differs from the manifest (altered or damaged); "
                "nothing was restored"
            )
        done += listed[rel]["bytes"]
        if progress:
            progress("verifying", done, total, rel)
    revision = manifest.get("schema_revision")
    if not db.known_revision(revision):
        raise BackupError(
            f"the backup's schema revision {revision!r} is unknown to this version of CLARA "
            "(made by a newer one?): restore it with that version"
        )
    return VerifiedBackup(src, manifest)


def _intact_manifest(src: Path) -> dict[str, Any]:
    manifest_path, sidecar = src / MANIFEST, src / SIDECAR
    for path in (manifest_path, sidecar):
        if not path.is_file():
            raise BackupInvalid(f"backup {src}: {path.name}: missing; nothing was restored")
    expected = sidecar.read_text(encoding="ascii", errors="replace").split()[:1]
    if [file_sha256(manifest_path)] != expected:
        raise BackupInvalid(
            f"backup {src}: {MANIFEST}: sha256 differs from {SIDECAR} (truncated or altered); "
            "nothing was restored"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError:
        raise BackupInvalid(f"backup {src}: {MANIFEST}: not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupInvalid(f"backup {src}: {MANIFEST}: not a CLARA backup ({FORMAT})")
    return manifest


def _first_layout_problem(src: Path, listed: dict[str, dict[str, Any]]) -> str | None:
    """Missing, unlisted, not plain or of the wrong size: the first such path, or None."""
    present: dict[str, os.stat_result] = {}
    for folder, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            path = Path(folder) / name
            info = path.lstat()
            rel = path.relative_to(src).as_posix()
            if stat.S_ISLNK(info.st_mode) or not (
                stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)
            ):
                return f"{rel}: not a plain file or folder"
            if stat.S_ISREG(info.st_mode):
                present[rel] = info
    for rel in sorted(set(listed) | set(present) - {MANIFEST, SIDECAR}):
        if rel not in present:
            return f"{rel}: missing"
        if rel not in listed:
            return f"{rel}: not in the manifest (an extra file)"
        if present[rel].st_size != listed[rel]["bytes"]:
            return (
                f"{rel}: {present[rel].st_size} bytes, the manifest says {listed[rel]['bytes']} "
                "(truncated or altered)"
            )
    return None


class _HashingReader(io.RawIOBase):
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        return n


@contextmanager
def _checked(path: Path, info: dict[str, Any]) -> Iterator[IO[bytes]]:
    """A file of the backup, read once more: its sha256 must still match when it is done
    (the backup could change between verification and restore). A reader that failed on a
    changed file (a COPY refusing a damaged row) is told so too."""
    with path.open("rb", buffering=0) as f:
        raw = _HashingReader(f)

        def changed() -> bool:
            block = bytearray(_BLOCK)
            while raw.readinto(block):  # what the caller left unread counts too
                pass
            return raw.digest.hexdigest() != info["sha256"]

        problem = f"{path}: changed since it was verified; the restore was undone"
        try:
            yield io.BufferedReader(raw, _BLOCK)
        except Exception as err:
            if changed():
                raise BackupInvalid(problem) from err
            raise
        if changed():
            raise BackupInvalid(problem)


# Restore ---------------------------------------------------------------------------------


def restore_backup(
    actor: Principal,
    settings: Settings,
    backup: VerifiedBackup,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreReport:
    """Restore a verified backup into the workbench `settings` name (data dir, database,
    vector store), which must be empty unless `force` (see the module's docstring)."""
    try:
        require(actor, PERMISSION)
        _check_engine(backup, settings)
        obstacles = _obstacles(settings)
        if obstacles and not force:
            raise TargetNotEmpty(
                f"{obstacles[0]}: restore into an empty data dir and database, or use --force "
                "(what is in the way is moved aside, nothing is deleted)"
            )
    except (PermissionDenied, BackupError) as err:
        _record_in_target(settings, actor, backup, err)
        raise
    try:
        engine, report = _restore_into(settings, backup, bool(obstacles), progress)
    except Exception as err:
        _record_in_target(settings, actor, backup, err)
        raise
    record(
        engine,
        actor.username,
        "system.restore",
        str(backup.path),
        detail={
            "backup_created_at": report.backup_created_at,
            "revision_from": report.backup_schema_revision,
            "revision": report.schema_revision,
            "files": report.files,
            "bytes": report.bytes,
            "moved_aside": report.moved_aside,
        },
    )
    return report


def _restore_into(
    settings: Settings, backup: VerifiedBackup, move_aside: bool, progress: Progress | None
) -> tuple[Engine, RestoreReport]:
    """Files, vectors, then the database; a failure undoes every step made so far."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with ExitStack() as undo:
        moved = _move_aside(settings, stamp, undo) if move_aside else []
        files, size = _restore_files(backup, settings.data_path, undo, progress)
        _rebase_active_model(settings, backup.manifest["source"]["data_dir"])
        undo.callback(
            vectors.import_vectors(
                settings, backup.manifest["vectors"], backup.opener(VECTORS_DIR), progress
            )
        )
        aside = f"clara_replaced_{stamp.lower()}" if move_aside else None
        engine, rebased, schema = _restore_database(backup, settings, aside, undo, progress)
        moved += [f"schema {schema}"] if schema else []
        undo.pop_all()
    return engine, RestoreReport(
        data_dir=settings.data_path,
        engine=backup.engine,
        backup_created_at=backup.manifest["created_at"],
        backup_schema_revision=backup.manifest["schema_revision"],
        schema_revision=current_revision(engine),
        files=files,
        bytes=size,
        vectors=backup.manifest["vectors"].get("count", 0),
        paths_rebased=rebased,
        moved_aside=moved,
    )


def _target_kind(settings: Settings) -> str:
    return "sqlite" if settings.effective_database_url.startswith("sqlite") else "postgresql"


def _sqlite_target(settings: Settings) -> Path:
    from sqlalchemy.engine import make_url

    return Path(make_url(settings.effective_database_url).database or "").expanduser().resolve()


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_engine(backup: VerifiedBackup, settings: Settings) -> None:
    target = _target_kind(settings)
    if backup.engine != target:
        raise BackupError(
            f"the backup holds a {backup.engine} database, CLARA_DATABASE_URL names a {target} "
            f"one: restore it into a {backup.engine} workbench"
        )


def _first_file(folder: Path) -> str | None:
    for here, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if filenames:
            return (Path(here) / sorted(filenames)[0]).relative_to(folder).as_posix()
    return None


def _obstacles(settings: Settings) -> list[str]:
    """What the target holds already, one line each ([]: empty). Reads only: an SQLite file
    that does not exist is not created by looking."""
    data = settings.data_path
    found = []
    if first := _first_file(data):
        found.append(f"the data dir {data} is not empty (it holds {first})")
    if _target_kind(settings) == "sqlite":
        path = _sqlite_target(settings)
        if not _under(path, data) and path.exists():
            found.append(f"the database file {path} exists")
    else:
        from core.db import connect, get_engine

        engine = get_engine(settings)
        connect(engine)  # an unreachable server: one line naming it, not a traceback
        tables = db.postgres_tables_present(engine)
        if tables:
            found.append(f"the database holds tables already ({', '.join(tables[:4])}, ...)")
    if settings.chroma_url:
        count = vectors.server_vector_count(settings)
        if count:
            raise TargetNotEmpty(
                f"the Chroma server {settings.chroma_url} holds {count} vectors of a "
                "workbench already; --force does not move a server's collection aside: point "
                "CLARA_CHROMA_URL at an empty server"
            )
    else:
        chroma = settings.effective_chroma_path
        if not _under(chroma, data) and (first := _first_file(chroma)):
            found.append(f"the vector store {chroma} is not empty (it holds {first})")
    return found


def _move(source: Path, target: Path, undo: ExitStack) -> None:
    source.rename(target)
    undo.callback(target.rename, source)


def _move_aside(settings: Settings, stamp: str, undo: ExitStack) -> list[str]:
    """--force: move what is in the way (files) aside; returns where it went."""
    data, suffix = settings.data_path, f".{REPLACED_PREFIX}{stamp}"
    moved = []
    if _target_kind(settings) == "sqlite" and db.sqlite_in_use(_sqlite_target(settings)):
        db.settle_sqlite(_sqlite_target(settings))
    entries = sorted(p for p in data.iterdir() if not p.name.startswith(REPLACED_PREFIX))
    if entries:
        aside = data / f"{REPLACED_PREFIX}{stamp}"
        aside.mkdir()
        undo.callback(aside.rmdir)
        for entry in entries:
            _move(entry, aside / entry.name, undo)
        moved.append(str(aside))
    outside = []
    if _target_kind(settings) == "sqlite" and not _under(_sqlite_target(settings), data):
        base = _sqlite_target(settings)
        outside += [base.with_name(base.name + s) for s in ("", "-wal", "-shm")]
    if not settings.chroma_url and not _under(settings.effective_chroma_path, data):
        outside.append(settings.effective_chroma_path)
    for path in outside:
        if path.exists():
            _move(path, path.with_name(path.name + suffix), undo)
            moved.append(str(path.with_name(path.name + suffix)))
    return moved


def _restore_files(
    backup: VerifiedBackup, data: Path, undo: ExitStack, progress: Progress | None
) -> tuple[int, int]:
    """Copy `data/` into the data dir: each top-level folder built aside and renamed into
    place (core.artifacts.staged_dir), each top-level file written aside and renamed."""
    prefix = DATA_DIR + "/"
    listed = {r: i for r, i in backup.manifest["files"].items() if r.startswith(prefix)}
    groups: dict[str, list[str]] = {}
    for rel in sorted(listed):
        groups.setdefault(rel[len(prefix) :].split("/", 1)[0], []).append(rel)
    if not data.exists():
        data.mkdir(parents=True)
        undo.callback(_remove_if_empty, data)
    modes = backup.manifest.get("file_modes", {})
    total, done = sum(i["bytes"] for i in listed.values()), 0
    for top, rels in groups.items():
        final = data / top
        if rels == [prefix + top]:
            partial = data / f".{top}.restoring.tmp"
            undo.callback(partial.unlink, missing_ok=True)
            _copy_checked(backup, rels[0], partial, modes)
            partial.rename(final)
            undo.callback(final.unlink, missing_ok=True)
        else:
            with staged_dir(final) as staging:
                for rel in rels:
                    _copy_checked(backup, rel, staging / rel[len(prefix + top) + 1 :], modes)
            undo.callback(shutil.rmtree, final, ignore_errors=True)
        done += sum(listed[r]["bytes"] for r in rels)
        if progress:
            progress("files", done, total, top)
    return len(listed), total


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _copy_checked(backup: VerifiedBackup, rel: str, target: Path, modes: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        _checked(backup.file(rel), backup.manifest["files"][rel]) as source,
        target.open("xb") as out,
    ):
        shutil.copyfileobj(source, out, _BLOCK)
    os.chmod(target, modes.get(rel, 0o600))


def _rebased(path: str, old: str, new: str) -> str:
    if path == old or path.startswith(old.rstrip("/") + "/"):
        return new + path[len(old) :]
    return path


def _rebase_active_model(settings: Settings, old_root: str) -> None:
    """The record of the tuned embedding model in use names its folder: under the new data
    dir now (core.corpus.embedders writes it)."""
    from core.corpus.embedders import active_tuned_model, record_active_model

    tuned = active_tuned_model(settings)
    if tuned is not None:
        path = _rebased(tuned["path"], old_root, str(settings.data_path))
        if path != tuned["path"]:
            record_active_model(settings, tuned["name"], path)


def _restore_database(
    backup: VerifiedBackup,
    settings: Settings,
    aside_schema: str | None,
    undo: ExitStack,
    progress: Progress | None,
) -> tuple[Engine, int, str | None]:
    """Load the database last: on PostgreSQL it commits whole or not at all, so nothing
    after it can fail. Returns the engine, the paths rebased and the schema that received
    the tables that were in the way."""
    from core.db import get_engine, upgrade

    old, new = backup.manifest["source"]["data_dir"], str(settings.data_path)
    section = backup.manifest["database"]
    if backup.engine == "postgresql":
        engine = get_engine(settings)
        with engine.begin() as conn:
            moved = aside_schema and db.move_postgres_tables_aside(conn, aside_schema)
            db.load_postgres(conn, section, backup.opener(DATABASE_DIR), progress)
            return engine, db.rebase_paths(conn, old, new), aside_schema if moved else None
    target = _sqlite_target(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.restoring.tmp")
    undo.callback(partial.unlink, missing_ok=True)
    _copy_checked(backup, f"{DATABASE_DIR}/{section['file']}", partial, {})
    partial.rename(target)
    for suffix in ("", "-wal", "-shm"):
        undo.callback(target.with_name(target.name + suffix).unlink, missing_ok=True)
    engine = get_engine(settings)
    undo.callback(engine.dispose)
    upgrade(engine)
    rebased = db.rebase_sqlite_paths(engine, old, new)
    if progress:
        progress("database", 1, 1, target.name)
    return engine, rebased, None


def _record_in_target(
    settings: Settings, actor: Principal, backup: VerifiedBackup, err: BaseException
) -> None:
    """Audit a refused or failed restore where the target already holds a workbench's audit
    log; an empty target stays empty (there is no log to write to)."""
    from sqlalchemy import inspect

    from core.db import get_engine

    if _target_kind(settings) == "sqlite" and not db.sqlite_in_use(_sqlite_target(settings)):
        return
    outcome = "denied" if isinstance(err, PermissionDenied) else "failed"
    try:
        engine = get_engine(settings)
        if inspect(engine).has_table("audit_log"):
            record(
                engine,
                actor.username,
                "system.restore",
                str(backup.path),
                outcome,
                {"error": str(err)[:500]},
            )
    except SQLAlchemyError:
        pass  # the refusal itself is what the caller must see
