"""Files written whole or not at all: labels, checkpoints, training status, datastore records;
and a file's stamp, which changes whenever the file is replaced.

The content goes to a temporary file beside the target, is flushed to disk, and is renamed
onto the target; the folder is flushed too, so after a crash (kill -9 or power loss) readers
find the old file or the new one, never a fragment. Each caller names its temporary files
so that its start-up clean-up can recognise leftovers (``.tmp-*`` for models, ``*.partial``
in the datastore).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def file_stamp(path: str) -> tuple | None:
    """(modification time, size, inode) of the file at ``path``; None when there is none. A file
    replaced by ``atomic_write`` gets a new inode, so a new stamp, even within one clock tick."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def atomic_write(target: str | os.PathLike, write, prefix: str = ".tmp-", suffix: str | None = None) -> str:
    """Call ``write(tmp_path)`` then rename onto ``target``; ``suffix`` defaults to the target's own."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=str(target.parent))
    os.close(fd)
    try:
        write(tmp)
        _fsync_path(tmp, os.O_RDONLY)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give the usual mode
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(str(target.parent), os.O_RDONLY)
    return str(target)


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike, **naming) -> str:
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), **naming)


def atomic_write_text(target: str | os.PathLike, content: str, **naming) -> str:
    return atomic_write(target, lambda tmp: Path(tmp).write_text(content), **naming)


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
