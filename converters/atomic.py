"""Output folders that appear complete or not at all.

Everything is written into a temporary sibling of the destination (same filesystem, so the
final rename is atomic) and renamed into place only when complete. Any exception, Ctrl-C
included, removes the temporary folder; SIGTERM is turned into the same interrupt while a
conversion runs, so ``kill`` leaves nothing behind either.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from .errors import ConvertError

__all__ = ["check_destination", "staging", "terminate_as_interrupt"]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(dst: Path, *, force: bool, protect: Path | None = None) -> None:
    """Refuse a destination that would clobber data: non-empty without ``force``, or the source itself."""
    target = dst.resolve()
    if protect is not None and (_inside(target, protect.resolve()) or _inside(protect.resolve(), target)):
        raise ConvertError("dst_is_source", f"{dst} is the source folder, or inside it, or holds it")
    if dst.is_file() or dst.is_symlink():
        if not force:
            raise ConvertError("dst_exists", f"{dst} exists and is not a folder; pass --force to replace it")
    elif dst.is_dir() and any(dst.iterdir()) and not force:
        raise ConvertError("dst_exists", f"{dst} exists and is not empty; pass --force to replace it")


@contextmanager
def staging(dst: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``dst``; on success it replaces ``dst``, on any error it is removed."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.partial"
        tmp.mkdir()  # not mkdtemp: the folder that ends up at dst should get the usual permissions
    except OSError as exc:
        raise ConvertError("dst_unwritable", f"cannot create a folder next to {dst}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        _publish(tmp, dst, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, dst: Path, *, force: bool) -> None:
    check_destination(dst, force=force)  # it may have changed while we worked
    if dst.is_dir() and not dst.is_symlink() and not any(dst.iterdir()):
        dst.rmdir()
    if dst.exists() or dst.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        dst.replace(trash / dst.name)
        tmp.replace(dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.replace(dst)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises KeyboardInterrupt so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
