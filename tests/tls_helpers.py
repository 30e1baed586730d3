"""A certificate authority made by a test, with the ``openssl`` command (the
``cryptography`` package is not among the project's dependencies): a CA, a
server certificate for 127.0.0.1 and localhost, and a client certificate."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.redis_server import TlsFiles

#: EC P-256 keys: quick to make, and what any TLS 1.2+ peer accepts.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def openssl() -> str | None:
    return shutil.which("openssl")


def _run(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()[:500]}")


@dataclass(frozen=True)
class Authority:
    """A CA's certificate and key, in ``folder``."""

    folder: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.folder / f"{self.name}.crt"

    @property
    def key(self) -> Path:
        return self.folder / f"{self.name}.key"

    @classmethod
    def create(cls, folder: Path, name: str = "ca") -> Authority:
        folder.mkdir(parents=True, exist_ok=True)
        ca = cls(folder, name)
        _run("req", "-x509", *_KEY, "-keyout", ca.key.name, "-out", ca.cert.name, "-days", "2",
             "-subj", f"/CN=vab test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=folder)
        return ca

    def issue(self, name: str, usage: str, san: str | None = None) -> tuple[Path, Path]:
        """(certificate, key) for ``name``: ``usage`` ``serverAuth`` or ``clientAuth``;
        ``san``: subjectAltName (the names a client checks a server's against)."""
        folder = self.folder
        _run("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        extensions = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
                      f"extendedKeyUsage={usage}", "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
        if san:
            extensions.append(f"subjectAltName={san}")
        (folder / f"{name}.ext").write_text("\n".join(extensions) + "\n")
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", self.cert.name, "-CAkey", self.key.name,
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
        return folder / f"{name}.crt", folder / f"{name}.key"


def server_and_client(folder: Path) -> tuple[Authority, TlsFiles]:
    """A CA, and the files of a server (127.0.0.1, localhost) that requires client
    certificates, with a client certificate the same CA signed."""
    ca = Authority.create(folder)
    cert, key = ca.issue("server", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    client_cert, client_key = ca.issue("client", "clientAuth")
    return ca, TlsFiles(cert=cert, key=key, ca=ca.cert, client_cert=client_cert, client_key=client_key)
