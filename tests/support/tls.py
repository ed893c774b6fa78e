"""A throwaway certificate authority and a server certificate for 127.0.0.1, made with the
`openssl` command: for the fake upstream's https mode.

`TestCA.server_context()` is what `FakeUpstream(tls=...)` serves with; `ca_file` is the
PEM file a client trusts (the gateway takes it from `SSL_CERT_FILE`, as httpx, aiohttp and
the native transport's default context all read it).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest


class TestCA:
    __test__ = False  # a helper, not a test class

    def __init__(self, directory: Path) -> None:
        if shutil.which("openssl") is None:
            pytest.fail("openssl not found (run .ci/system-deps)", pytrace=False)
        self.dir = directory
        self.ca_file = directory / "ca.pem"
        ca_key, key, csr = directory / "ca.key", directory / "server.key", directory / "server.csr"
        self.cert_file, self.key_file = directory / "server.pem", key
        ext = directory / "server.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=gateway test CA", "-keyout", str(ca_key), "-out", str(self.ca_file))  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca_file), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(self.cert_file))  # fmt: skip

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context
