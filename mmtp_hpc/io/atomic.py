"""Atomic file replacement: write to a temporary file beside the target, then rename.

A reader (or a crashed writer) never sees a half-written file: the target is either
the old file or the complete new one, because ``os.replace`` within one directory
is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; on success it replaces ``path``.

    ``copy_existing=True`` starts the temporary file as a copy of ``path`` (when it
    exists), which is how appends stay atomic. On an exception the temporary file is
    removed and ``path`` is left untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        # name the file the user asked for, not the temporary one mkstemp would have failed on
        import errno

        from mmtp_hpc.errors import OutputError

        exc = OutputError(f"cannot write: the directory {str(directory)!r} does not exist (No such file or "
                          "directory)", path=str(target))
        exc.errno = errno.ENOENT
        raise exc
    # Same directory, so the final rename never crosses a file system boundary.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if copy_existing and target.exists():
            shutil.copyfile(target, tmp)
        else:
            # Writers such as h5py want to create the file themselves.
            tmp.unlink()
        yield tmp
        if target.exists():
            # Keep the permissions a user gave the existing file.
            shutil.copymode(target, tmp)
        else:
            # mkstemp creates 0600 files; give the result the usual umask-based mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
