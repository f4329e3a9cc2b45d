"""``--web-config FILE``: TLS and basic authentication for ``/metrics``, in the format of
Prometheus' exporter-toolkit (the file node_exporter and Prometheus itself take), so one
file serves every exporter of a host::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      min_version: TLS12             # the default; TLS13 too
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hashes only (htpasswd -nBC 12 "")

Every key is checked: a key the toolkit has and vmstats does not implement (cipher
suites, HTTP/2, extra headers, client certificates taken without verification) is an
error naming it, as an unknown key is; so is a password that is not a bcrypt hash.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmstats.errors import UsageError, os_reason

_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version"}  # fmt: skip
_NOT_IMPLEMENTED = {
    "tls_server_config": {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
                          "client_allowed_sans", "cert", "key"},
    "": {"http_server_config", "rate_limit"},
}  # fmt: skip
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}  # fmt: skip
#: The toolkit's client_auth_type values vmstats implements: Python's ssl module verifies
#: any certificate it asks for, so the two that take one unverified are refused.
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}  # fmt: skip
_BCRYPT = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class WebConfig:
    """What ``/metrics`` requires of a client: TLS (a server context), and basic auth
    (user -> bcrypt hash; empty: none)."""

    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)


def read_web_config(path: Path) -> WebConfig:
    """The web config at ``path``, checked; :class:`UsageError` naming what is wrong."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {os_reason(exc)}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not YAML: {exc}") from None
    document = {} if document is None else document
    if not isinstance(document, dict):
        raise UsageError(f"{path}: must be a mapping (tls_server_config, basic_auth_users)")
    _check_keys(path, "", document, {"tls_server_config", "basic_auth_users"})
    tls = _tls(path, document.get("tls_server_config"))
    users = _users(path, document.get("basic_auth_users"))
    return WebConfig(tls, users)


def _check_keys(path: Path, section: str, mapping: Mapping[Any, Any], known: set[str]) -> None:
    where = f"{section}." if section else ""
    for key in mapping:
        if key in _NOT_IMPLEMENTED.get(section, set()):
            raise UsageError(f"{path}: {where}{key}: not supported by vmstats")
        if key not in known:
            raise UsageError(f"{path}: unknown setting {where}{key} "
                             f"(known: {', '.join(sorted(known))})")  # fmt: skip


def _tls(path: Path, section: object) -> ssl.SSLContext | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise UsageError(f"{path}: tls_server_config must be a mapping")
    _check_keys(path, "tls_server_config", section, _TLS_KEYS)
    for key in ("cert_file", "key_file"):
        if not isinstance(section.get(key), str):
            raise UsageError(f"{path}: tls_server_config.{key} is required (a file name)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(path, section, "min_version", "TLS12")
    if "max_version" in section:
        context.maximum_version = _version(path, section, "max_version", "TLS13")
    base = path.parent
    try:
        context.load_cert_chain(base / section["cert_file"], base / section["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"{path}: cannot load {section['cert_file']} and "
                         f"{section['key_file']}: {_reason(exc)}") from None  # fmt: skip
    auth = section.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise UsageError(f"{path}: tls_server_config.client_auth_type {auth!r} is not "
                         f"supported (one of {', '.join(_CLIENT_AUTH)})")  # fmt: skip
    context.verify_mode = _CLIENT_AUTH[auth]
    ca = section.get("client_ca_file")
    if auth != "NoClientCert" and not isinstance(ca, str):
        raise UsageError(f"{path}: client_auth_type {auth} needs client_ca_file")
    if isinstance(ca, str):
        try:
            context.load_verify_locations(base / ca)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"{path}: cannot load client_ca_file {ca}: {_reason(exc)}") from None
    return context


def _version(path: Path, section: Mapping[str, Any], key: str, default: str) -> ssl.TLSVersion:
    value = section.get(key, default)
    if value not in _VERSIONS:
        raise UsageError(f"{path}: tls_server_config.{key} {value!r}: one of "
                         f"{', '.join(_VERSIONS)}")  # fmt: skip
    return _VERSIONS[value]


def _reason(exc: OSError) -> str:
    """An OS error in the system's words; OpenSSL's in its own (its codes are no errno)."""
    if isinstance(exc, ssl.SSLError):
        return f"{exc.strerror or exc} (PEM files, and a key that matches the certificate?)"
    return os_reason(exc)


def _users(path: Path, section: object) -> dict[str, bytes]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise UsageError(f"{path}: basic_auth_users must be a mapping of user: bcrypt hash")
    users = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise UsageError(f"{path}: basic_auth_users: {user!r} is not a user name")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise UsageError(f"{path}: basic_auth_users.{user}: not a bcrypt hash (plain-text "
                             "passwords are refused: htpasswd -nBC 12 '' makes one)")  # fmt: skip
        users[user] = hashed.encode()
    return users
