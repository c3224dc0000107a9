"""Tokens of every role can be listed (id, role, creation, last use; never the secret) and revoked
by id or id prefix; schema version 2 adds the id and the last use to an existing version 1 database."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from receiver import service
from receiver.auth import new_token, token_hash
from receiver.config import ReceiverConfig, ReceiverSection
from receiver.store import postgres, sqlite
from receiver.store.factory import open_store
from tests.conftest import RunningReceiver


async def get_events(receiver: RunningReceiver, token: str) -> int:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s,
        s.get(receiver.url + "/v1/events") as r,
    ):
        return r.status


async def test_list_and_revoke_tokens_of_any_role(receiver: RunningReceiver, database_url: str) -> None:
    config = ReceiverConfig(receiver=ReceiverSection(database_url=SecretStr(database_url)))
    reader = await receiver.add_reader()
    pole_token = receiver.tokens["pole-1"]
    tokens = {t.token_id: t for t in await service.list_tokens(config)}
    reader_id = hashlib.sha256(reader.encode()).hexdigest()[:12]
    pole_id = hashlib.sha256(pole_token.encode()).hexdigest()[:12]
    assert set(tokens) == {reader_id, pole_id}
    assert tokens[reader_id].role == "reader" and tokens[reader_id].name == "tests"
    assert tokens[pole_id].role == "pole" and tokens[pole_id].pole_id == "pole-1"
    assert all(t.last_used_at is None and t.revoked_at is None and t.created_at > 0 for t in tokens.values())

    assert await get_events(receiver, reader) == 200
    await receiver.receiver.ctx.token_use.settled()  # the use is written after the answer, not before
    used = {t.token_id: t for t in await service.list_tokens(config)}[reader_id].last_used_at
    assert used is not None and time.time() - used < 10
    for _ in range(5):
        assert await get_events(receiver, reader) == 200
    await receiver.receiver.ctx.token_use.settled()
    again = {t.token_id: t for t in await service.list_tokens(config)}[reader_id].last_used_at
    assert again == used, "at most one write a minute per token"

    assert await service.revoke_token(config, reader_id[:6]) == reader_id
    assert await get_events(receiver, reader) == 401
    revoked = {t.token_id: t for t in await service.list_tokens(config)}[reader_id]
    assert revoked.revoked_at is not None
    with pytest.raises(service.TokenNotFound):
        await service.revoke_token(config, "ffffffffffff0")
    assert await get_events(receiver, pole_token) == 403, "the pole token is still valid (for its own role)"


async def test_an_ambiguous_prefix_names_the_candidates(receiver: RunningReceiver, database_url: str) -> None:
    config = ReceiverConfig(receiver=ReceiverSection(database_url=SecretStr(database_url)))
    ids = [t.token_id for t in await service.list_tokens(config)]
    while True:  # tokens until two ids share their first character
        await receiver.add_reader()
        ids = [t.token_id for t in await service.list_tokens(config)]
        shared = {i[0] for i in ids if sum(1 for j in ids if j[0] == i[0]) > 1}
        if shared:
            break
    prefix = shared.pop()
    with pytest.raises(service.AmbiguousToken) as caught:
        await service.revoke_token(config, prefix)
    for candidate in (i for i in ids if i.startswith(prefix)):
        assert candidate in str(caught.value)
    assert all(t.revoked_at is None for t in await service.list_tokens(config))


def test_the_command_line_lists_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smartpole.cli import main

    db = tmp_path / "rx.db"
    config = tmp_path / "receiver.toml"
    config.write_text(f'[receiver]\ndatabase_url = "sqlite:///{db}"\n')

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["receiver", *args, "--config", str(config)])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = cli("add-pole", "pole-7")
    assert code == 0, err
    secret = out.strip()
    token_id = hashlib.sha256(secret.encode()).hexdigest()[:12]
    assert f"id {token_id}" in err
    code, out, err = cli("list-tokens")
    assert code == 0, err
    assert token_id in out and "pole-7" in out and "never" in out and "active" in out
    assert secret not in out + err and secret[4:16] not in out
    code, out, err = cli("revoke-token", token_id[:5])
    assert code == 0 and token_id in out, err
    code, out, err = cli("revoke-token", "zz")
    assert code == 1 and "no token" in err
    code, out, err = cli("revoke-token", token_id)
    assert code == 1 and "revoked already" in err
    assert "revoked 20" in cli("list-tokens")[1]


V1_TOKEN_ROW = "INSERT INTO tokens (token_hash, role, pole_id, name, created_at) VALUES ({})"


async def test_schema_2_migrates_a_version_1_database(database_url: str) -> None:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    token = new_token()
    digest = token_hash(token)
    if backend == "sqlite":
        import sqlite3

        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in sqlite.MIGRATIONS[1]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute(V1_TOKEN_ROW.format("?, ?, ?, ?, ?"), (digest, "pole", "pole-1", None, 1.0))
        db.commit()
        db.close()
    else:
        conn: Any = await asyncpg.connect(database_url)
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in postgres.MIGRATIONS[1]:
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        await conn.execute(V1_TOKEN_ROW.format("$1, $2, $3, $4, $5"), digest, "pole", "pole-1", None, 1.0)
        await conn.close()
    store = await open_store(database_url)
    try:
        info = await store.lookup_token(digest)
        assert info is not None and info.pole_id == "pole-1" and info.token_id == digest[:12]
        (listed,) = await store.list_tokens()
        assert listed.token_id == digest[:12] and listed.created_at == 1.0 and listed.last_used_at is None
    finally:
        await store.close()
    store = await open_store(database_url)  # opening again migrates nothing more
    await store.close()
