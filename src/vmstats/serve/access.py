"""Who may read which VM: its owner, the admin group, and the groups ``allow`` rules add.

A VM's socket is readable by the ordinary user who runs its VMM and by the admin group
(``--group``); an ``allow`` rule adds a group for the VMs it selects::

    allow = ["dba:name=db*", "ops:owner=alice", "web:domain=web-*,owner=libvirt-qemu"]

``GROUP:SELECTOR[,SELECTOR...]``: ``name=GLOB`` (the served name), ``owner=USER`` (the
VMM's user), ``domain=GLOB`` (a libvirt domain's name or UUID); a rule selects a VM when
all of its selectors do.  Two guards say it: the socket's file modes and POSIX ACL (the
kernel refuses ``connect``), and the peer's credentials at accept (``SO_PEERCRED`` and
``SO_PEERGROUPS``, which the kernel took at ``connect`` and nobody can fake), so a socket
whose modes went wrong still serves nobody it should not.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import grp
import os
import socket
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from vmstats import acl

#: SO_PEERGROUPS (Linux 4.13), which Python's socket module does not name.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_SELECTORS = ("name", "owner", "domain")


@dataclass(frozen=True)
class Peer:
    """Who connected: the credentials the kernel took at ``connect``."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    @property
    def all_groups(self) -> frozenset[int]:
        return self.groups | {self.gid}


def peer_of(conn: socket.socket) -> Peer:
    """The credentials of a unix socket's peer; OSError if the kernel has none."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))  # fmt: skip
    size = 256 * 4
    while True:
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            break
        except OSError as exc:
            if exc.errno != errno.ERANGE or size >= 65536 * 4:
                raise
            size *= 16
    groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return Peer(pid, uid, gid, frozenset(groups))


@dataclass(frozen=True)
class VmIdentity:
    """What a rule can select a VM by."""

    name: str
    owner: str = ""
    domain: tuple[str, str] | None = None  # a libvirt domain's (name, UUID)


@dataclass(frozen=True)
class AllowRule:
    """``GROUP:SELECTOR,...``: the group's members read the VMs all the selectors match."""

    text: str
    gid: int
    name: str | None = None
    owner: str | None = None
    domain: str | None = None

    def selects(self, vm: VmIdentity) -> bool:
        if self.name is not None and not fnmatch.fnmatchcase(vm.name, self.name):
            return False
        if self.owner is not None and vm.owner != self.owner:
            return False
        if self.domain is not None:
            if vm.domain is None:
                return False
            name, uuid = vm.domain
            if not (fnmatch.fnmatchcase(name, self.domain) or uuid.lower() == self.domain.lower()):
                return False
        return True

    def __str__(self) -> str:
        return self.text


def group_id(name: str) -> int:
    """A group's gid, by name or number; ValueError naming a group that does not exist."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no group named {name!r}") from None


def allow_rule(text: str) -> AllowRule:
    """``GROUP:SELECTOR[,SELECTOR...]`` parsed, its group looked up: the type of
    ``--allow`` and of the file's ``allow`` list."""
    group, colon, selectors = text.partition(":")
    if not colon or not group or not selectors:
        raise argparse.ArgumentTypeError(f"not GROUP:SELECTOR[,SELECTOR...]: {text!r} "
                                         "(for example dba:name=db*)")  # fmt: skip
    chosen: dict[str, str] = {}
    for selector in selectors.split(","):
        key, equals, value = selector.partition("=")
        if key not in _SELECTORS or not equals or not value:
            raise argparse.ArgumentTypeError(f"{text!r}: {selector!r} is not one of "
                                             "name=GLOB, owner=USER, domain=GLOB")  # fmt: skip
        if key in chosen:
            raise argparse.ArgumentTypeError(f"{text!r}: {key} given twice")
        chosen[key] = value
    try:
        gid = group_id(group)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return AllowRule(text, gid, **chosen)


@dataclass(frozen=True)
class Access:
    """The host's access policy: the admin group and the ``allow`` rules."""

    admin_gid: int
    rules: tuple[AllowRule, ...] = ()

    def groups_for(self, vm: VmIdentity) -> frozenset[int]:
        """The groups that ``allow`` rules add for ``vm`` (the admin group aside)."""
        return frozenset(r.gid for r in self.rules if r.selects(vm)) - {self.admin_gid}

    def admits(self, peer: Peer, owner: int | None, groups: Collection[int]) -> bool:
        """May ``peer`` read a VM whose socket is ``owner``'s and ``groups``' (beside the
        admin group's)?  Root and the daemon's own user may read every VM."""
        if peer.uid in (0, os.geteuid()) or (owner is not None and peer.uid == owner):
            return True
        return not peer.all_groups.isdisjoint({self.admin_gid, *groups})


def regrant(path: str | os.PathLike[str], mode: int, groups: Collection[int]) -> None:
    """Give a socket of ours (maybe given to its user since) the ACL for ``groups``:
    only a file's owner may set its ACL, so a socket given away is taken back for the
    moment (CAP_CHOWN, which the daemon keeps to give sockets away) and given again."""
    me = os.geteuid()
    owner = os.lstat(path).st_uid
    if owner != me:
        os.chown(path, me, -1, follow_symlinks=False)
    try:
        acl.set_groups(path, mode, groups)
    finally:
        if owner != me:
            os.chown(path, owner, -1, follow_symlinks=False)


def group_names(gids: Iterable[int]) -> list[str]:
    """Group names for the listing (the number where a group has no name)."""
    out = []
    for gid in sorted(gids):
        try:
            out.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            out.append(str(gid))
    return out
