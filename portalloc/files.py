"""The server's files, written so that no other user can steer the writes.

The port manager runs as root in directories such as ``/var/tmp`` that
every user can write.  Three rules keep another user from turning its
writes against the system (the attack: plant a symlink where the server
will write, and let root overwrite the file it points at):

*No predictable name is ever opened for writing.*  A file is replaced by
writing a temporary file with a random name, opened with ``O_CREAT |
O_EXCL | O_NOFOLLOW`` (so an existing name or a symlink makes the open
fail instead of being followed), then renamed over the target; ``rename``
replaces a symlink itself, never what it points at.

*Only a directory that no one else controls is used by default.*  A
default directory must be a real directory (``lstat``: not a symlink),
owned by root or by the server's own user, and writable by neither group
nor others.  One that fails is not used (the caller falls back to
``~/.daqportmgr``).  One we create is made mode 0755 whatever the umask.

*The pid file is opened without following a symlink and locked.*  An
exclusive ``flock`` held for the server's life makes a second server with
the same pid file stop before it touches any file.  The pid is written into
the locked file itself (a rename would put the lock on a file nobody sees).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat

__all__ = ["unsafe_directory", "make_directory", "write_atomically", "PidFile",
           "PidFileLocked", "open_append"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def unsafe_directory(directory: str) -> str | None:
    """Why ``directory`` must not be used by default, or None if it is fine.

    Not fine: a symlink, not a directory, owned by a user other than root
    and us, or writable by group or others.
    """
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None                     # we would create it
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid not in (0, os.geteuid()):
        return f"it belongs to uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def make_directory(directory: str) -> None:
    """Create ``directory`` (and missing parents) mode 0755, if it is missing."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent and parent != directory:
        make_directory(parent)
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        return                          # made meanwhile: the caller checks it
    os.chmod(directory, 0o755, follow_symlinks=False)      # past the umask


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` by a file holding ``text``: a reader sees the old
    file or the new, never a mix, and no name another user could have
    planted is opened.  Raises OSError."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    try:
        # Names are written as the original writes them (see decode_line).
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_append(path: str) -> int:
    """A descriptor appending to ``path`` (created 0644), never through a symlink."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)


class PidFileLocked(OSError):
    """Another process holds the pid file's lock; ``pid`` is what it wrote."""

    def __init__(self, path: str, pid: str) -> None:
        super().__init__(errno.EWOULDBLOCK, f"{path} is locked by a running server"
                         + (f" (pid {pid})" if pid else ""))
        self.filename = path
        self.pid = pid


class PidFile:
    """The pid file, locked for as long as this object lives.

    Opening takes the lock (or raises `PidFileLocked`) and changes nothing
    in the file; `write` puts the pid in; `remove` unlinks and unlocks.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self.fd)
            raise PidFileLocked(path, pid) from None
        except OSError:
            os.close(self.fd)
            raise

    def write(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def remove(self) -> None:
        """Unlink the file (if it is still ours), then let the lock go."""
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
