"""Files and directories of the run directory: private from the moment they exist, and a run
directory nobody else controls.

A file written and then `chmod`ed is readable by everyone for the time between the two calls
(longer when the process dies in between); one written in place keeps whatever mode it had. So a
file holding a secret is written to a fresh temporary file created with its final mode and owner,
then renamed over the old one: whoever opens the path sees the old file or the new one, never a
readable half.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

#: Mode of a file that holds a secret: its owner alone reads it.
PRIVATE = 0o600


class UntrustedRunDir(RuntimeError):
    """The run directory, or a directory above it, may be changed by someone other than us (and
    root): they could plant configs, keys or sockets that our processes would trust."""


def write_file(
    path: Path,
    data: str | bytes,
    mode: int = PRIVATE,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace `path` with `data`, atomically, created with `mode` and `owner` from the start.

    Args:
        path: the file to write; its directory must exist.
        data: the content (text is written as UTF-8).
        mode: permission bits of the new file (0600 unless a group must read it: 0640).
        owner: (uid, gid) to give the file before anything is written into it; None keeps ours.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a process that died mid-write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        # Still empty: set the exact mode whatever the umask took away, and the owner.
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_run_dir(path: Path) -> None:
    """Refuse a run directory that another user could change, as ssh refuses such a `~/.ssh`.

    The directory (and the symlink, if it is one) must belong to us or root and not be writable
    by group or others; every directory above it must belong to us or root and, when others may
    write to it, carry the sticky bit (like /tmp and /var/tmp: nobody can rename our entry).

    Raises:
        UntrustedRunDir: naming the directory, its owner and what to do.
    """
    me = os.geteuid()
    trusted = {0, me}
    fix = (
        f"remove it (if you know where it came from) or choose another CWH_RUN_DIR; "
        f"the run directory must belong to {_name(me)} and be writable by no one else"
    )
    link = path.lstat()
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
        raise UntrustedRunDir(
            f"run directory {path} is a symlink owned by {_name(link.st_uid)}, not by you "
            f"({_name(me)}): {fix}"
        )
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedRunDir(f"run directory {path} is not a directory: {fix}")
    if st.st_uid not in trusted:
        raise UntrustedRunDir(
            f"run directory {path} is owned by {_name(st.st_uid)}, not by you ({_name(me)}): "
            f"another user could have planted configs or keys in it; {fix}"
        )
    if st.st_mode & 0o022:
        raise UntrustedRunDir(
            f"run directory {path} is group- or world-writable ({stat.filemode(st.st_mode)}): "
            f"chmod go-w {path}, or {fix}"
        )
    for parent in path.resolve().parents:
        pst = parent.stat()
        if pst.st_uid not in trusted or (pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX):
            raise UntrustedRunDir(
                f"{parent}, above run directory {path}, is owned by {_name(pst.st_uid)} "
                f"({stat.filemode(pst.st_mode)}): others could replace the run directory; "
                f"choose another CWH_RUN_DIR"
            )


def ensure_run_dir(path: Path) -> None:
    """Create the run directory (0755: other users only traverse it) unless it exists, then
    check that it can be trusted (`check_run_dir`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    check_run_dir(path)
