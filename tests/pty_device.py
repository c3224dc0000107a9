"""A serial device for tests: a pseudo-terminal behind a symlink that can be unplugged and replugged."""

from __future__ import annotations

import os
import tty
from pathlib import Path


class PtyDevice:
    """The test writes to the master side; the code under test opens ``path`` with pyserial.

    ``unplug`` closes the pty (the reader's next read fails, the /dev/pts node goes)
    and removes the symlink, as a USB serial adapter's by-id link disappears;
    ``replug`` makes a new pty and points the link at it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._master: int | None = None
        self._slave: int | None = None
        self.replug()

    def replug(self) -> None:
        assert self._master is None
        master, slave = os.openpty()
        tty.setraw(slave)
        self.path.symlink_to(os.ttyname(slave))
        self._master, self._slave = master, slave

    def unplug(self) -> None:
        self.path.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def write(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._master, view) :]

    def offer(self, data: bytes) -> int:
        """Write what the pty takes now, without waiting (nobody may be reading it); the bytes written.

        A blocking write to a full pty never returns, not even when another thread unplugs it.
        """
        fd = self._master  # unplug may close it meanwhile: then this raises OSError
        assert fd is not None
        os.set_blocking(fd, False)
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        finally:
            os.set_blocking(fd, True)

    def close(self) -> None:
        if self._master is not None:
            self.unplug()
