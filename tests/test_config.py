"""Configuration files: examples pass, errors name the file and key, secrets come from the environment."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import typing
from pathlib import Path

import pytest

from gateway.configfile import ConfigError, load_config
from receiver.config import ReceiverConfig
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "config").glob("*.toml"))


def check(cmd: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "check-config", *args], capture_output=True, text=True, env=env, timeout=60)


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"pole.example.toml", "receiver.example.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes(path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    result = check(smartpole_cmd, child_env, str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_unknown_key(tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    bad = tmp_path / "pole.toml"
    bad.write_text('[pole]\nid = "p1"\n\n[outbox]\nmax_byte = 10\n')
    result = check(smartpole_cmd, child_env, str(bad))
    assert result.returncode == 2
    assert f"{bad}: outbox.max_byte: unknown key" in result.stderr
    assert result.stdout == ""


def test_wrong_type_and_every_error_reported(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    bad = tmp_path / "pole.toml"
    bad.write_text('[pole]\nid = "p1"\n\n[outbox]\nmax_bytes = "lots"\ndurability = "sometimes"\n')
    result = check(smartpole_cmd, child_env, str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}: outbox.max_bytes: ") and "integer" in line for line in lines), lines
    assert any(line.startswith(f"{bad}: outbox.durability: ") and "'full'" in line for line in lines), lines


def test_missing_file(tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    result = check(smartpole_cmd, child_env, str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path / 'nope.toml'}: file not found"


def test_not_toml(tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    bad = tmp_path / "pole.toml"
    bad.write_text("[pole\nid = 1\n")
    result = check(smartpole_cmd, child_env, str(bad))
    assert result.returncode == 2
    assert f"{bad}: not valid TOML" in result.stderr


def test_receiver_file_is_recognised(tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    bad = tmp_path / "receiver.toml"
    bad.write_text("[receiver]\nport = 70000\n")
    result = check(smartpole_cmd, child_env, str(bad))
    assert result.returncode == 2
    assert f"{bad}: receiver.port: " in result.stderr


def test_secret_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text('[receiver]\ndatabase_url = "sqlite:///from-file.db"\n')
    config = load_config(path, ReceiverConfig, env={"SMARTPOLE_RECEIVER_DATABASE_URL": "postgresql://u:pw@db/x"})
    assert config.receiver.database_url.get_secret_value() == "postgresql://u:pw@db/x"
    assert "pw" not in repr(config)
    config = load_config(path, ReceiverConfig, env={})
    assert config.receiver.database_url.get_secret_value() == "sqlite:///from-file.db"


def test_load_config_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text("[receiver]\nport = -1\nwhat = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ReceiverConfig, env={})
    assert sorted(p.split(":")[0] for p in info.value.problems) == ["receiver.port", "receiver.what"]


def test_daemon_refuses_bad_config(tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]) -> None:
    bad = tmp_path / "pole.toml"
    bad.write_text("[pole]\nid = 5\n")
    result = subprocess.run(
        [*smartpole_cmd, "run", "--config", str(bad)], capture_output=True, text=True, env=child_env, timeout=60
    )
    assert result.returncode == 2
    assert f"{bad}: pole.id: " in result.stderr


def test_daemon_logs_json_with_pole_id_and_stops_on_sigterm(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    conf = tmp_path / "pole.toml"
    conf.write_text(f'[pole]\nid = "pole-json"\n\n[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    proc = subprocess.Popen(
        [*smartpole_cmd, "run", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "outbox_open" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in lines + rest.splitlines() if line.strip()]
    assert records and all(r["pole_id"] == "pole-json" for r in records)
    assert any(r["event"] == "stopped" for r in records)
    assert (tmp_path / "state" / "outbox.db").exists()


def _types_in(annotation: object) -> list[object]:
    """Every type named inside an annotation: X | None, list[X], Annotated[Union[A, B], ...]..."""
    return [annotation, *(t for arg in typing.get_args(annotation) for t in _types_in(arg))]


def _models(model: type, seen: set[type]) -> list[type]:
    """``model`` and every pydantic model reachable through its fields."""
    from pydantic import BaseModel

    out = [model]
    seen.add(model)
    for info in model.model_fields.values():
        for kind in _types_in(info.annotation):
            if isinstance(kind, type) and issubclass(kind, BaseModel) and kind not in seen:
                out += _models(kind, seen)
    return out


@pytest.mark.parametrize("root", ["pole", "receiver"])
def test_every_setting_is_described_and_strict(root: str) -> None:
    from gateway.config import PoleConfig

    model = PoleConfig if root == "pole" else ReceiverConfig
    models = _models(model, set())
    assert len(models) > (15 if root == "pole" else 3), [m.__name__ for m in models]
    undescribed = [
        f"{m.__name__}.{name}" for m in models for name, info in m.model_fields.items() if not info.description
    ]
    assert not undescribed, undescribed
    lax = [m.__name__ for m in models if m.model_config.get("extra") != "forbid"]
    assert not lax, f"models that accept unknown keys: {lax}"
    model()  # every table has defaults that validate
