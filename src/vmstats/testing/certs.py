"""Certificates for the TLS tests, made with the ``openssl`` command: a CA that signs the
server's certificate (for 127.0.0.1 and localhost) and a client's, and a second CA with a
client of its own (one the server must refuse)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl_unavailable_reason() -> str | None:
    return None if shutil.which("openssl") else "openssl is not installed (apt-get install openssl)"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", key, "-out", cert)  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, request = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", request)  # fmt: skip
    _openssl("x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", cert)  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]  # certificate, key
    client: tuple[Path, Path]  # signed by ``ca``
    stranger: tuple[Path, Path]  # a client signed by another CA


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server = _signed(folder, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                     "extendedKeyUsage=serverAuth\n")  # fmt: skip
    client = _signed(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = _signed(folder, "stranger", other, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server, client, stranger)
