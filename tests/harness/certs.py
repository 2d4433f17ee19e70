"""A throw-away certificate authority for TLS tests, made with the ``openssl`` CLI.

The ``cryptography`` package is not a dependency of the project, so the tests use the
``openssl`` command (Debian package ``openssl``); `openssl_missing()` says when it is
absent. The commands are the ones docs/broker.md gives to operators.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestCa", "make_ca", "openssl_missing"]


def openssl_missing() -> str | None:
    """A skip reason when the ``openssl`` command is not installed."""
    return None if shutil.which("openssl") else "the openssl command is not installed"


def _run(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()[-800:]}")


@dataclass(frozen=True)
class TestCa:
    """A CA and one server certificate it signed (all PEM files in `directory`)."""

    __test__ = False  # not a pytest test class

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_ca(directory: Path, *, name: str = "test-ca", server_dns: str = "localhost") -> TestCa:
    """Create a CA (EC P-256, 1 day) and a server certificate for `server_dns` and
    127.0.0.1, signed by it, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "1", "-keyout", str(ca_key), "-out", str(ca_cert), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={server_dns}",
        cwd=directory,
    )  # fmt: skip
    ext.write_text(
        f"subjectAltName=DNS:{server_dns},IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    for path in (ca_key, key):
        path.chmod(0o600)
    return TestCa(directory, ca_cert, ca_key, cert, key)
