"""The one way RS-CLIP writes outputs: staged on the destination's file system, published as one unit.

Three tools, each used by every writer of its kind:

- :func:`atomic_write_text`: one small file (JSON, constraints) via a temporary file and a rename.
- :func:`staged_dir` / :func:`replace_dir`: a whole folder that RS-CLIP owns (an index, the default
  bundle, an exported bundle, a training checkpoint, an installed bundle): built in a hidden sibling and
  swapped in; the previous folder is moved aside and removed once the new one is in place.
- :class:`OutputFolder`: a job's output folder (``--out`` of classify, search, demo), which may be a user's
  folder holding other files. The rule (also in the README's CLI section):

  * a folder that does not exist yet is built in a hidden sibling and appears in one rename;
  * an existing folder is never emptied: the job's files are staged in a hidden folder inside it (so on
    its file system even when it is a mount point) and moved in under a lock. Only the files this job
    writes (``owned`` names or patterns, e.g. ``labels.tif`` or ``heatmap_*.tif``) are replaced, and only
    with ``overwrite``; other files in it are left alone. An error or interrupt while moving in puts the
    earlier set back, so the folder holds the old set or the new one, never a mix;
  * a second job writing the same folder while the first runs is refused (an OS file lock, released by
    the kernel when its process dies, so a killed run never blocks the next).

Hidden working folders are named ``.<name>.rsclip-staging-<pid>-<token>`` (beside the target) or
``.rsclip-staging-<pid>-<token>`` (inside an output folder), and ``...rsclip-old-<pid>-<token>`` for the
previous content moved aside. A process killed with SIGKILL leaves them behind; the next writer of the same
place removes those whose process is gone (``os.kill(pid, 0)``), rolling a half-done swap back or forward.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

from .errors import OutputError, OutputExistsError, RSClipError

STAGING = "rsclip-staging"
OLD = "rsclip-old"
LOCK_SUFFIX = "rsclip-lock"
JOURNAL = ".rsclip-publish.json"
_HIDDEN = re.compile(rf"^\.(?:(?P<target>.+)\.)?(?P<kind>{STAGING}|{OLD})-(?P<pid>\d+)-(?P<tok>[0-9a-f]+)$")
# errno values that mean "this place cannot be written", as opposed to a bug or a bad input.
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT, errno.ENOTDIR,
                errno.EEXIST, errno.EISDIR, errno.EXDEV, errno.EIO}

# Output folders this process has published, in order: the CLI says what was written when interrupted.
PUBLISHED: list[Path] = []


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` makes the file at a temporary path beside ``path`` (same directory, so same file
    system), which is then renamed to ``path``: readers never see half a file; on an error it is removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (atomic_write), UTF-8."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --- owners of hidden working folders ----------------------------------------------------------------
def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (unknown counts as alive: never delete a live run's work)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows: ask psutil, else assume alive
        try:
            import psutil
        except ImportError:
            return True
        return bool(psutil.pid_exists(pid))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: exists, owned by someone else
    return True


def clean_stale(folder: Path, target: Optional[str] = None) -> list[Path]:
    """Remove the hidden staging and moved-aside folders in ``folder`` whose owner process is gone.

    ``target`` limits the clean-up to those of one sibling (``.<target>.rsclip-...``); None cleans all, and
    also those inside an output folder (``.rsclip-...``). A moved-aside folder is restored when its swap
    was cut short (see :func:`_recover`). Returns what was removed or restored.
    """
    done: list[Path] = []
    try:
        # Moved-aside folders first: undoing a swap needs the staging folder it came with.
        entries = sorted(Path(folder).iterdir(), key=lambda p: f".{OLD}-" not in p.name)
    except OSError:
        return done
    for p in entries:
        m = _HIDDEN.match(p.name)
        if not m or (target is not None and m.group("target") != target) or pid_alive(int(m.group("pid"))):
            continue
        if m.group("kind") == OLD:
            _recover(Path(folder), p, m.group("target"))
        else:
            shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


def _recover(folder: Path, aside: Path, target: Optional[str]) -> None:
    """Finish or undo a swap whose process died between moving the old content aside and removing it."""
    if target is not None:  # a whole folder moved aside (replace_dir): put it back if nothing replaced it
        final = folder / target
        if not final.exists():
            with contextlib.suppress(OSError):
                os.replace(aside, final)
                return
        with contextlib.suppress(OSError):
            _remove(aside)
        return
    # Files of an output folder moved aside (OutputFolder.publish), with a journal of the new names.
    try:
        journal = json.loads((aside / JOURNAL).read_text(encoding="utf-8"))
        new, staging = list(journal["new"]), folder / str(journal["staging"])
    except (OSError, ValueError, KeyError, TypeError):
        new, staging = [], folder / "-"  # no journal: nothing had been moved aside yet
    if staging.is_dir() and any((staging / n).exists() for n in new):  # cut short: roll back to the old set
        for n in new:
            if not (staging / n).exists():
                with contextlib.suppress(OSError):
                    _remove(folder / n)
        for p in aside.iterdir():
            if p.name != JOURNAL:
                with contextlib.suppress(OSError):
                    os.replace(p, folder / p.name)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


# --- folders RS-CLIP owns: build beside, swap in ------------------------------------------------------
def staging_dir(final: Path) -> Path:
    """A new, empty hidden sibling of ``final`` (same file system, so the swap is a rename); stale ones of
    dead processes are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent, final.name)
    d = final.parent / f".{final.name}.{STAGING}-{_token()}"
    d.mkdir()
    return d


def replace_dir(tmp: Path, final: Path, *, complete: Optional[Callable[[Path], bool]] = None) -> None:
    """Rename the finished directory ``tmp`` to ``final``, replacing whatever ``final`` held.

    The previous ``final`` is moved aside first and deleted only once the new one is in place; if the
    rename fails it is put back. ``complete(final)`` says whether another process has just put a finished
    result of the same build there (the rename then fails because ``final`` is not empty): ``tmp`` is
    discarded instead of raising. ``tmp`` must be on the same file system as ``final`` (see staging_dir).
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    with _deferred_interrupt():
        if final.exists():
            old = final.with_name(f".{final.name}.{OLD}-{_token()}")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException as exc:
            if isinstance(exc, OSError) and complete is not None and complete(final):
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same build first
            else:
                if old is not None and not final.exists():
                    os.replace(old, final)
                    old = None
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path, *, complete: Optional[Callable[[Path], bool]] = None) -> Iterator[Path]:
    """Build a folder RS-CLIP owns: yields an empty staging folder beside ``final``, swapped in (replace_dir)
    when the block ends without an error; removed otherwise."""
    tmp = staging_dir(final)
    try:
        yield tmp
        replace_dir(tmp, final, complete=complete)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- a job's output folder ----------------------------------------------------------------------------
class _FileLock:
    """An exclusive OS lock on a file (flock / msvcrt): held while a job writes a folder, dropped by the kernel
    when the process dies, so it can never go stale."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_fd(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                    return False
                raise
            # The previous holder unlinks the file on release: a lock on an unlinked file guards nothing.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.write(fd, info.encode())
                return True
            os.close(fd)

    def owner(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Ctrl-C during a swap is held back until it is done (main thread only; others cannot get SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got and callable(previous):
            previous(signal.SIGINT, None)


def write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says a place cannot be written (full, read-only, not permitted), not a bug."""
    if isinstance(exc, RSClipError):
        return False
    if isinstance(exc, sqlite3.Error):  # GeoPackage writes: "database or disk is full", "readonly database"
        return True
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return True
    msg = str(exc).lower()
    # GDAL write errors (rasterio's CPLE_* classes) carry the OS reason in their text only.
    return type(exc).__module__.startswith("rasterio") and any(
        s in msg for s in ("no space left", "disk full", "read-only", "permission denied", "write"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class OutputFolder:
    """Stage a job's files on the output folder's file system and publish them as one unit (module docstring).

    ::

        with OutputFolder(out, ("labels.tif", "summary.json"), overwrite=False) as out:
            write(out.path / "labels.tif")      # out.path: the staging folder
            out.publish()                       # now they are in out.final

    Entering takes the lock, removes stale staging of dead runs and refuses when ``owned`` files exist and
    ``overwrite`` is false (OutputExistsError) or another job holds the lock (OutputError): before any
    work is done. Leaving without ``publish()`` (an error, a cancel) removes the staging and any folder
    made for it. Write failures inside the block (disk full, read-only) become OutputError.
    """

    def __init__(self, final: os.PathLike | str, owned: Sequence[str], *, overwrite: bool = False) -> None:
        self.final = Path(os.path.abspath(final))
        self.owned = tuple(owned)
        self.overwrite = bool(overwrite)
        self.path = self.final  # set on entering
        self.published = False
        self._inside = False
        self._lock: Optional[_FileLock] = None
        self._made: list[Path] = []

    # -- what belongs to this job
    def owns(self, name: str) -> bool:
        return not name.startswith(".") and any(fnmatch.fnmatchcase(name, pat) for pat in self.owned)

    def existing(self) -> list[Path]:
        """This job's kind of files already in the output folder."""
        if not self.final.is_dir():
            return []
        return sorted(p for p in self.final.iterdir() if self.owns(p.name))

    def _unwritable(self, where: Path, exc: OSError) -> OutputError:
        return OutputError(f"cannot write to {where}: {_reason(exc)}; choose a writable folder with {{out}}",
                           params=("out",))

    # -- entering: lock, clean, check, stage
    def __enter__(self) -> OutputFolder:
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        return self

    def _open(self) -> None:
        final, parent = self.final, self.final.parent
        if final.exists() and not final.is_dir():
            raise OutputError(f"{final} is a file, not a folder; give a folder for the outputs with {{out}}",
                              params=("out",))
        p = parent
        missing = []
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                d.mkdir()
                self._made.append(d)
        except OSError as exc:
            raise self._unwritable(parent, exc) from exc
        self._lock = _FileLock(parent / f".{final.name}.{LOCK_SUFFIX}")
        try:
            got = self._lock.acquire()
        except OSError as exc:  # parent not writable: an existing folder (a mount point) holds its own lock
            if not final.is_dir():
                raise self._unwritable(parent, exc) from exc
            self._lock = _FileLock(final / f".{LOCK_SUFFIX}")
            try:
                got = self._lock.acquire()
            except OSError as exc2:
                raise self._unwritable(final, exc2) from exc2
        if not got:
            owner = self._lock.owner()
            self._lock = None
            raise OutputError(f"another RS-CLIP run ({owner}) is writing {final} now; wait for it to finish or "
                              "choose another {out}", params=("out",))
        clean_stale(parent, final.name)
        if final.is_dir():
            clean_stale(final)
        self.check()
        self._inside = final.is_dir()
        tok = _token()
        self.path = final / f".{STAGING}-{tok}" if self._inside else parent / f".{final.name}.{STAGING}-{tok}"
        try:
            self.path.mkdir()
        except OSError as exc:
            raise self._unwritable(self.path.parent, exc) from exc

    @property
    def destination(self) -> Path:
        """Where the published files end up (atomic.final_path)."""
        return self.final

    def check(self) -> None:
        """Refuse when this job's files are there and overwrite was not asked for."""
        existing = self.existing()
        if existing and not self.overwrite:
            raise OutputExistsError(
                f"{self.final} already holds {', '.join(p.name for p in existing)}; pass {{overwrite}} to replace "
                "them or choose another {out} folder", params=("overwrite", "out"))

    # -- publishing
    def publish(self) -> None:
        """Move the staged files in as one unit (one rename for a new folder; see the module docstring)."""
        self.check()
        with _deferred_interrupt():
            if not self.final.exists():
                os.rename(self.path, self.final)  # a new folder: it appears complete, in one step
            else:
                self._publish_into()
        self.published = True
        PUBLISHED.append(self.final)

    def _publish_into(self) -> None:
        names = sorted(p.name for p in self.path.iterdir())
        old = self.existing()
        aside = None
        if old:
            aside = self.final / f".{OLD}-{self.path.name.rsplit(STAGING + '-', 1)[1]}"
            aside.mkdir()
            atomic_write_text(aside / JOURNAL, json.dumps({"new": names, "staging": self.path.name}))
        moved: list[str] = []
        try:
            for p in old:
                os.replace(p, aside / p.name)  # type: ignore[operator]
            for n in names:
                os.replace(self.path / n, self.final / n)
                moved.append(n)
        except BaseException:
            # Back to the old set: the new files go back to staging, the old ones return.
            for n in moved:
                with contextlib.suppress(OSError):
                    os.replace(self.final / n, self.path / n)
            if aside is not None:
                for p in old:
                    if (aside / p.name).exists():
                        with contextlib.suppress(OSError):
                            os.replace(aside / p.name, p)
                shutil.rmtree(aside, ignore_errors=True)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    # -- leaving
    def __exit__(self, exc_type, exc, tb) -> None:
        self._close()
        if exc is not None and write_failure(exc):
            raise OutputError(f"writing the outputs to {self.final} failed ({_reason(exc)}); free some space or "
                              "choose a writable {out}", params=("out",)) from exc

    def _close(self) -> None:
        try:
            if not self.published and self.path != self.final and self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.release()  # before the folders made for it go: the lock file lives there
                self._lock = None
        if not self.published:
            for d in reversed(self._made):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when still empty


Final = Union[Path, Mapping[str, Path]]


def final_path(final: Final, name: str) -> Optional[Path]:
    """Where a job's file ``name`` ends up: in the output folder ``final``, or at its own path when ``final``
    maps names to paths (OutputFiles.targets); None when the job's caller does not keep that file."""
    if isinstance(final, Mapping):
        return Path(final[name]) if name in final else None
    return Path(final) / name


def place_file(src: Path, dst: Path) -> Path:
    """Move a finished file to ``dst`` in one rename; across file systems it is copied to a hidden temporary
    file beside ``dst`` first (then renamed), so ``dst`` is never seen half written."""
    src, dst = Path(src), Path(dst)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        src.unlink()
    return dst


class OutputFiles:
    """A job's files published to paths of their own (QGIS Processing's output destinations), as one unit.

    ``targets`` maps each file the job writes (``labels.tif``) to its final path. Entering refuses existing
    targets without ``overwrite``; the files are staged beside the first target; ``publish()`` moves every
    staged file to its target (the previous file moved aside and put back if a later move fails, so the set
    is the old one or the new one) and removes targets the job did not produce this time (a stale side-car).
    Files staged without a target are dropped.
    """

    def __init__(self, targets: dict[str, Path], *, overwrite: bool = False) -> None:
        self.targets = {name: Path(os.path.abspath(p)) for name, p in targets.items()}
        self.overwrite = bool(overwrite)
        self.path = Path()
        self.published = False

    def __enter__(self) -> OutputFiles:
        existing = [p for p in self.targets.values() if p.exists()]
        if existing and not self.overwrite:
            raise OutputExistsError(f"{', '.join(map(str, existing))} already exist; allow {{overwrite}} or choose "
                                    "other output paths", params=("overwrite",))
        first = next(iter(self.targets.values()))
        try:
            for p in self.targets.values():
                p.parent.mkdir(parents=True, exist_ok=True)
                clean_stale(p.parent, p.name)
            self.path = staging_dir(first)
        except OSError as exc:
            raise OutputError(f"cannot write to {first.parent}: {_reason(exc)}; choose writable output paths") from exc
        return self

    @property
    def destination(self) -> dict[str, Path]:
        """Where the published files end up (atomic.final_path)."""
        return self.targets

    def publish(self) -> None:
        tok = _token()
        done: list[tuple[Path, Optional[Path]]] = []  # (target, its previous file moved aside)
        with _deferred_interrupt():
            try:
                for name, dst in self.targets.items():
                    src = self.path / name
                    aside = None
                    if dst.exists():
                        aside = dst.with_name(f".{dst.name}.{OLD}-{tok}")
                        os.replace(dst, aside)
                    done.append((dst, aside))
                    if src.exists():
                        place_file(src, dst)
            except BaseException:
                for dst, aside in reversed(done):
                    with contextlib.suppress(OSError):
                        dst.unlink(missing_ok=True)
                        if aside is not None:
                            os.replace(aside, dst)
                raise
            for _, aside in done:
                if aside is not None:
                    with contextlib.suppress(OSError):
                        aside.unlink()
        self.published = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path != Path() and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        if exc is not None and write_failure(exc):
            raise OutputError(f"writing {', '.join(map(str, self.targets.values()))} failed ({_reason(exc)}); free "
                              "some space or choose writable output paths") from exc


def open_outputs(out: Union[str, os.PathLike, Mapping[str, Path]], owned: Sequence[str], *,
                 overwrite: bool = False) -> Union[OutputFolder, OutputFiles]:
    """The publisher of a job's outputs: an output folder (``--out``, the dialogs), or a mapping of the job's
    file names to paths of their own (Processing's destinations). Both stage on the destination's file
    system and publish the set as one unit; ``.path`` is where to write, ``.destination`` where files end up."""
    if isinstance(out, Mapping):
        return OutputFiles({n: Path(p) for n, p in out.items()}, overwrite=overwrite)
    return OutputFolder(out, owned, overwrite=overwrite)
