"""An accepted event survives SIGKILL of its process at any instant."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

KILLS = 24


def test_every_acknowledged_put_survives_sigkill(tmp_path: Path, child_env: dict[str, str]) -> None:
    db = tmp_path / "outbox.db"
    rng = random.Random(20261126)
    acknowledged: dict[str, int] = {}
    previous_max = 0
    for run in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/helpers/outbox_writer.py"), str(db), str(rng.choice([1, 8, 32]))],
            stdout=subprocess.PIPE,
            env=child_env,
            cwd=ROOT,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        out = child.stdout.read()
        child.wait()
        lines = out.split(b"\n")
        if lines and lines[-1]:
            lines.pop()  # a half-written line at the kill: that put's receipt was never printed
        seqs = []
        for line in lines:
            if line:
                id_, seq = line.decode().split()
                acknowledged[id_] = int(seq)
                seqs.append(int(seq))
        if seqs:
            assert min(seqs) > previous_max, f"run {run}: seq went back after a restart"
            previous_max = max(seqs)

    assert len(acknowledged) > 1000, "the child should have committed plenty before the kills"
    con = sqlite3.connect(db)
    stored = dict(con.execute("SELECT id, seq FROM events").fetchall())
    con.close()
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    assert all(stored[i] == s for i, s in acknowledged.items())
