"""POSIX access ACLs on a file: how a socket gets more groups than its one owning group.

A unix socket is connected to by whoever may write its inode, and the kernel checks the
inode's access ACL as it checks the mode bits.  The ACL is the ``system.posix_acl_access``
extended attribute in the kernel's binary form (``include/uapi/linux/posix_acl_xattr.h``):
a version word, then (tag, permissions, id) entries sorted by tag and id.  Written here
rather than through libacl: it is one attribute of a dozen bytes per entry.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Collection

_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def _entry(tag: int, perm: int, ident: int = _UNDEFINED_ID) -> bytes:
    return struct.pack("<HHI", tag, perm, ident)


def encode(mode: int, groups: Collection[int], perm: int) -> bytes:
    """The ACL of ``mode`` (owner, group, others) with ``perm`` (rwx bits, 0..7) for each
    of ``groups`` as well; the mask lets the owning group and the named groups through."""
    named = sorted(set(groups))
    group_perm = (mode >> 3) & 7
    return b"".join([
        struct.pack("<I", _VERSION),
        _entry(_USER_OBJ, (mode >> 6) & 7),
        _entry(_GROUP_OBJ, group_perm),
        *(_entry(_GROUP, perm, gid) for gid in named),
        _entry(_MASK, group_perm | (perm if named else 0)),
        _entry(_OTHER, mode & 7),
    ])  # fmt: skip


def named_groups(data: bytes) -> dict[int, int]:
    """The named groups of an ACL in binary form, with their permissions (for tests and
    for telling what a file grants)."""
    out = {}
    for offset in range(4, len(data) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", data, offset)
        if tag == _GROUP:
            out[ident] = perm
    return out


def set_groups(path: str | os.PathLike[str], mode: int, groups: Collection[int],
               perm: int = 6) -> None:  # fmt: skip
    """Let ``groups`` (gids) ``perm`` the file at ``path`` beside what ``mode`` lets, or
    none but ``mode``'s when ``groups`` is empty.  Only the file's owner (or
    CAP_FOWNER) may; OSError otherwise, ``EOPNOTSUPP`` where the file system keeps no
    ACLs."""
    if groups:
        os.setxattr(path, _XATTR, encode(mode, groups, perm), follow_symlinks=False)
        return
    try:
        os.removexattr(path, _XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
    os.chmod(path, mode)  # the group bits were the mask's


def groups_of(path: str | os.PathLike[str]) -> dict[int, int]:
    """The named groups a file's ACL lets in, with their permissions."""
    try:
        return named_groups(os.getxattr(path, _XATTR, follow_symlinks=False))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return {}
        raise
