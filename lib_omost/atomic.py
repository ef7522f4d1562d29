"""Files the extension writes are whole or absent: written to a temporary file in the same folder, flushed to disk,
then renamed over the old one (a rename within a folder is atomic). A WebUI killed mid-write, a full disk or a
read-only folder leaves the old file as it was and at most a stray temporary file, never half a file under the
real name."""

from __future__ import annotations

import os
import secrets


def replace_durably(done: str, dest: str):
    """Rename the finished file `done` to `dest` (its data on disk first, then the rename)."""
    with open(done, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(done, dest)
    _sync_folder(os.path.dirname(os.path.abspath(dest)))


def _sync_folder(folder: str):
    if not hasattr(os, 'O_DIRECTORY'):  # Windows: no directory handles to sync
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is done
    finally:
        os.close(fd)


def temp_beside(path: str, suffix: str = '.tmp') -> str:
    """A new empty file in `path`'s folder (created if missing), named after it, for `write_atomic`'s way."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, f'.{os.path.basename(path)}.{secrets.token_hex(4)}{suffix}')
        try:  # the mode the umask gives any new file (tempfile.mkstemp's would be 0600)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def discard(tmp: str):
    try:
        os.remove(tmp)
    except OSError:
        pass


def write_atomic(path: str, data, encoding: str = 'utf-8'):
    """Write `data` (str or bytes) to `path` all at once. OSError as the system said it (ENOSPC, EROFS, EACCES);
    the old file is then untouched and no temporary file is left."""
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    tmp = temp_beside(path)
    try:
        with open(tmp, 'wb') as f:
            f.write(raw)
        replace_durably(tmp, path)
    except BaseException:
        discard(tmp)
        raise
