"""A Mosquitto broker of the test's own: a free port, a password file, the ACL from
``config/mosquitto/acl``, a TLS listener with a CA made by ``openssl`` here, persistence on.

It can be killed and started again on the same ports and persistence directory, as a
broker restart in production would.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from receiver.mosquitto import password_line
from tests.conftest import ROOT

ACL = ROOT / "config" / "mosquitto" / "acl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) in ``directory``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subject = f"/CN=SmartPole test {name}"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject, "-keyout", key, "-out", cert
    )
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by ``ca``."""
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "2",
            "-extfile", ext, "-out", cert)  # fmt: skip
    return cert, key


@dataclass
class Broker:
    directory: Path
    users: dict[str, str]
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    acl: bool = True
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        self.ca = make_ca(self.directory)
        self.server = make_server_cert(self.directory, self.ca)
        self.write_users()
        conf = [
            # As root, Mosquitto drops to the 'mosquitto' user, which cannot read the test's private
            # directory; as any other user this line has no effect.
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.directory / 'passwd'}",
            "persistence true",
            f"persistence_location {self.directory / 'data'}/",
            "autosave_interval 1",
            "max_queued_messages 200000",
            "max_inflight_messages 100",
            f"listener {self.port} 127.0.0.1",
            f"listener {self.tls_port} 127.0.0.1",
            f"cafile {self.ca[0]}",
            f"certfile {self.server[0]}",
            f"keyfile {self.server[1]}",
            f"log_dest file {self.directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.acl:
            shutil.copy(ACL, self.directory / "acl")
            conf.insert(3, f"acl_file {self.directory / 'acl'}")
        (self.directory / "mosquitto.conf").write_text("\n".join(conf) + "\n")

    def write_users(self) -> None:
        """The password file, with lines made by our own ``password_line`` (what add-pole prints)."""
        lines = [password_line(user, password) for user, password in self.users.items()]
        (self.directory / "passwd").write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""

    def start(self) -> Broker:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM saves the persistence file; SIGKILL loses what was not saved yet (autosave is 1 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None
