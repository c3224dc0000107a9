"""The fleet registry, roles and remote configuration at the receiver, over real HTTP on both backends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.remote_config import EMPTY_VERSION, overlay_version
from receiver.auth import new_token, token_hash
from receiver.store import postgres, sqlite
from receiver.store.factory import open_store
from tests.conftest import RunningReceiver
from tests.test_receiver import batch, event, post

Json = dict[str, Any]


async def call(
    rx: RunningReceiver,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data: bytes | None = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else orjson.dumps(body)
        headers["Content-Type"] = content_type
    async with aiohttp.ClientSession() as s, s.request(method, rx.url + path, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def add_admin(rx: RunningReceiver) -> str:
    token = new_token()
    await rx.store.add_token(token_hash(token), "admin", None, "ops")
    return token


@pytest.fixture
async def tokens(receiver: RunningReceiver) -> dict[str, str]:
    return {
        "pole": receiver.tokens["pole-1"],
        "other": await receiver.add_pole("pole-2"),
        "reader": await receiver.add_reader(),
        "admin": await add_admin(receiver),
    }


# (method, path, body, roles it admits); {own} is pole-1, whose token is "pole".
ROUTES: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/v1/events", None, {"reader", "admin"}),
    ("GET", "/v1/media/" + "a" * 64, None, {"reader", "admin"}),
    ("GET", "/v1/poles", None, {"reader", "admin"}),
    ("GET", "/v1/poles/pole-1", None, {"reader", "admin"}),
    ("POST", "/v1/poles", {"pole_id": "pole-new"}, {"admin"}),
    ("PATCH", "/v1/poles/pole-2", {"name": "x"}, {"admin"}),
    ("POST", "/v1/poles/pole-2/tokens", None, {"admin"}),
    ("GET", "/v1/poles/pole-1/config", None, {"pole", "reader", "admin"}),
    ("PUT", "/v1/poles/pole-2/config", {"uplink": {"max_batch_events": 5}}, {"admin"}),
    ("DELETE", "/v1/poles/pole-2/config", None, {"admin"}),
    ("GET", "/v1/tags/north/config", None, {"reader", "admin"}),
    ("PUT", "/v1/tags/north/config", {"uplink": {"linger_s": 1.0}}, {"admin"}),
    ("DELETE", "/v1/tags/north/config", None, {"admin"}),
    ("POST", "/v1/poles/victim/revoke", None, {"admin"}),
    ("DELETE", "/v1/poles/victim", None, {"admin"}),
    ("POST", "/v1/batches", None, {"pole"}),
    ("PUT", "/v1/media/" + "a" * 64, None, {"pole"}),
]


async def test_every_route_answers_401_without_a_token_and_403_to_the_wrong_role(
    receiver: RunningReceiver, tokens: dict[str, str]
) -> None:
    await receiver.add_pole("victim")
    wrong = []
    for method, path, body, admitted in ROUTES:
        for credential in (None, "spt_unknown-token"):
            status, reply = await call(receiver, method, path, credential, body)
            if status != 401 or "error" not in reply:
                wrong.append(f"{method} {path} with {credential}: {status}")
        for role, token in tokens.items():
            status, reply = await call(receiver, method, path, token, body)
            if role in admitted and status in (401, 403):
                wrong.append(f"{method} {path} as {role}: {status} {reply}")
            elif role not in admitted and role != "other" and status != 403:
                wrong.append(f"{method} {path} as {role}: {status}, not 403")
    # A pole reads its own configuration, never another's.
    status, reply = await call(receiver, "GET", "/v1/poles/pole-1/config", tokens["other"])
    assert status == 403 and "pole-2" in reply["error"]
    assert not wrong, "\n".join(wrong)


async def test_an_admin_registers_lists_changes_and_revokes_poles(
    receiver: RunningReceiver, tokens: dict[str, str]
) -> None:
    admin, reader = tokens["admin"], tokens["reader"]
    new = {"pole_id": "pole-9", "name": "Main St 12", "location": {"lat": 52.1, "lon": 4.3}, "tags": ["north", "lit"]}
    status, reply = await call(receiver, "POST", "/v1/poles", admin, new)
    assert status == 201, reply
    token, pole = reply["token"], reply["pole"]
    assert token.startswith("spt_") and reply["token_id"] == token_hash(token)[:12]
    assert pole["name"] == "Main St 12" and pole["location"] == {"lat": 52.1, "lon": 4.3}
    assert pole["tags"] == ["lit", "north"] and pole["online"] is False and pole["revoked"] is False
    assert pole["config"] == {"target_version": "0", "applied_version": None, "in_sync": False, "error": None}
    status, reply = await call(receiver, "POST", "/v1/poles", admin, new)
    assert status == 409 and "exists" in reply["error"]

    # Its token writes; the status block is kept, with first and last contact.
    status_block = {
        "backlog": {"event": 3, "media": 4},
        "oldest_age_s": 12.5,
        "config_version": "0",
        "clock": {"state": "skewed", "skew_s": -3.5},
        "cameras": {"cam0": "up"},
    }
    code, answer = await post(receiver.url, batch("pole-9", [event(1)], status_block), token)
    assert code == 200 and answer["config_version"] == "0"
    status, pole = await call(receiver, "GET", "/v1/poles/pole-9", reader)
    assert status == 200 and pole["online"] is True and pole["first_seen"] == pole["last_seen"]
    assert pole["status"]["cameras"] == {"cam0": "up"} and pole["config"]["in_sync"] is True
    assert pole["events_total"] == 1 and pole["max_seq"] == 1

    # Filters and pages.
    for query, expected in [
        ("", ["pole-1", "pole-2", "pole-9"]),
        ("?tag=north", ["pole-9"]),
        ("?tag=south", []),
        ("?online=true", ["pole-9"]),
        ("?online=false", ["pole-1", "pole-2"]),
        ("?online=false&tag=north", []),
    ]:
        status, reply = await call(receiver, "GET", "/v1/poles" + query, reader)
        assert status == 200 and [p["pole_id"] for p in reply["poles"]] == expected, query
    seen, cursor = [], None
    while True:
        status, reply = await call(
            receiver, "GET", "/v1/poles?limit=2" + (f"&cursor={cursor}" if cursor else ""), reader
        )
        seen += [p["pole_id"] for p in reply["poles"]]
        cursor = reply["next_cursor"]
        if cursor is None:
            break
    assert seen == ["pole-1", "pole-2", "pole-9"]

    # PATCH changes only what it names; null clears.
    status, pole = await call(receiver, "PATCH", "/v1/poles/pole-9", admin, {"tags": ["south"], "location": None})
    assert status == 200 and pole["tags"] == ["south"] and pole["location"] is None and pole["name"] == "Main St 12"
    status, pole = await call(receiver, "PATCH", "/v1/poles/pole-9", admin, {"name": None})
    assert status == 200 and pole["name"] is None and pole["tags"] == ["south"]

    # Revoking keeps history; the token stops working; a new token brings the pole back.
    status, reply = await call(receiver, "DELETE", "/v1/poles/pole-9", admin)
    assert status == 200 and reply["tokens_revoked"] == 1 and reply["pole"]["revoked"] is True
    assert reply["pole"]["online"] is False and reply["pole"]["events_total"] == 1
    code, _ = await post(receiver.url, batch("pole-9", [event(2)], status_block), token)
    assert code == 401
    status, reply = await call(receiver, "GET", "/v1/events?pole=pole-9", reader)
    assert len(reply["events"]) == 1, "its events stay"
    status, reply = await call(receiver, "GET", "/v1/poles?revoked=true", reader)
    assert [p["pole_id"] for p in reply["poles"]] == ["pole-9"]
    status, reply = await call(receiver, "POST", "/v1/poles/pole-9/tokens", admin)
    assert status == 201
    code, _ = await post(receiver.url, batch("pole-9", [event(2)], status_block), reply["token"])
    assert code == 200
    status, pole = await call(receiver, "GET", "/v1/poles/pole-9", reader)
    assert pole["revoked"] is False and pole["events_total"] == 2


async def test_bad_input_at_the_fleet_routes_is_a_4xx_naming_it(
    receiver: RunningReceiver, tokens: dict[str, str]
) -> None:
    admin = tokens["admin"]
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/v1/poles", {"pole_id": "bad id"}, 400, "pole_id"),
        ("POST", "/v1/poles", {"pole_id": "p", "tags": ["no spaces"]}, 400, "tags.0"),
        ("POST", "/v1/poles", {"pole_id": "p", "location": {"lat": 91, "lon": 0}}, 400, "location.lat"),
        ("POST", "/v1/poles", {"pole_id": "p", "colour": "red"}, 400, "colour"),
        ("POST", "/v1/poles", "[1, 2]", 400, "object"),
        ("POST", "/v1/poles", "{not json", 400, "JSON"),
        ("PATCH", "/v1/poles/pole-1", {"tags": None}, 400, "tags"),
        ("PATCH", "/v1/poles/nobody", {"name": "x"}, 404, "nobody"),
        ("GET", "/v1/poles/nobody", None, 404, "nobody"),
        ("GET", "/v1/poles?online=maybe", None, 400, "online"),
        ("GET", "/v1/poles?limit=0", None, 400, "limit"),
        ("GET", "/v1/poles?cursor=%20x", None, 400, "cursor"),
        ("GET", "/v1/poles?tag=a%20b", None, 400, "tag"),
        ("PUT", "/v1/poles/nobody/config", {}, 404, "nobody"),
        ("PUT", "/v1/poles/pole-1/config", {"vision": {"detection": {"threshold": 1.5}}}, 400, "threshold"),
        ("PUT", "/v1/poles/pole-1/config", {"uplink": {"url": "https://elsewhere"}}, 400, "uplink.url"),
        ("PUT", "/v1/poles/pole-1/config", {"uplink": {"token": "x"}}, 400, "secret"),
        ("PUT", "/v1/poles/pole-1/config", {"pole": {"id": "other"}}, 400, "pole"),
        ("PUT", "/v1/tags/a%20b/config", {}, 400, "tag"),
        ("GET", "/v1/tags/none/config", None, 404, "none"),
    ]
    for method, path, body, code, named in cases:
        status, reply = await call(receiver, method, path, admin, body)
        assert status == code and named in reply["error"], (method, path, status, reply)
    status, reply = await call(receiver, "POST", "/v1/poles", admin, "x", content_type="text/plain")
    assert status == 415
    status, reply = await call(receiver, "PUT", "/v1/poles/pole-1/config", admin, "[vision\n", "application/toml")
    assert status == 400 and "TOML" in reply["error"]


async def test_overlays_of_tags_and_pole_make_its_target_version(
    receiver: RunningReceiver, tokens: dict[str, str]
) -> None:
    admin, pole_token = tokens["admin"], tokens["pole"]
    await call(receiver, "PATCH", "/v1/poles/pole-1", admin, {"tags": ["north", "lit"]})
    north = {"uplink": {"max_batch_events": 50, "linger_s": 2.0}, "vision": {"detection": {"threshold": 0.4}}}
    status, reply = await call(receiver, "PUT", "/v1/tags/north/config", admin, north)
    assert status == 200 and set(reply["poles"]) == {"pole-1"}
    toml = '[uplink]\nmax_batch_events = 20\n[policy]\ndenied_types = ["debug"]\n'
    status, reply = await call(receiver, "PUT", "/v1/tags/lit/config", admin, toml, "application/toml")
    assert status == 200
    own = {"vision": {"detection": {"nms_iou": 0.6}}, "cameras": {"cam0": {"fps": 5}}}
    status, reply = await call(receiver, "PUT", "/v1/poles/pole-1/config", admin, own)
    assert status == 200 and reply["version"] == overlay_version(reply["overlay"])
    # Tags by name (lit, then north), then the pole's own; tables merge, values are replaced.
    expected = {
        "uplink": {"max_batch_events": 50, "linger_s": 2.0},
        "policy": {"denied_types": ["debug"]},
        "vision": {"detection": {"threshold": 0.4, "nms_iou": 0.6}},
        "cameras": {"cam0": {"fps": 5.0}},
    }
    assert reply["target_version"] == overlay_version(expected)

    status, config = await call(receiver, "GET", "/v1/poles/pole-1/config", pole_token)
    assert status == 200 and config["overlay"] == expected and config["version"] == reply["target_version"]
    assert "layers" not in config, "a pole gets what it runs, not who changed it"
    status, config = await call(receiver, "GET", "/v1/poles/pole-1/config", tokens["reader"])
    assert [(layer["scope"], layer["name"]) for layer in config["layers"]] == [
        ("tag", "lit"),
        ("tag", "north"),
        ("pole", "pole-1"),
    ]
    assert config["layers"][0]["updated_by"] == "ops"

    # Every batch reply names the target; the pole's status says what it applied.
    target = reply["target_version"]
    code, answer = await post(receiver.url, batch("pole-1", [event(1)], {"config_version": "0"}), pole_token)
    assert code == 200 and answer["config_version"] == target
    status, pole = await call(receiver, "GET", "/v1/poles/pole-1", admin)
    assert pole["config"] == {"target_version": target, "applied_version": "0", "in_sync": False, "error": None}
    failing = {"config_version": "0", "config_error": f"remote config {target} not applied: cameras.cam0: ..."}
    await post(receiver.url, batch("pole-1", [], failing), pole_token)
    status, pole = await call(receiver, "GET", "/v1/poles/pole-1", admin)
    assert pole["config"]["error"].startswith(f"remote config {target}")

    # A tag's change moves the target; untagging and deleting bring it back to none.
    status, reply = await call(receiver, "DELETE", "/v1/tags/north/config", admin)
    assert status == 200 and reply["poles"]["pole-1"] != target
    await call(receiver, "DELETE", "/v1/poles/pole-1/config", admin)
    status, pole = await call(receiver, "PATCH", "/v1/poles/pole-1", admin, {"tags": []})
    assert pole["config"]["target_version"] == EMPTY_VERSION
    code, answer = await post(receiver.url, batch("pole-1", [], {"config_version": "0"}), pole_token)
    assert answer["config_version"] == EMPTY_VERSION
    status, pole = await call(receiver, "GET", "/v1/poles/pole-1", admin)
    assert pole["config"]["in_sync"] is True and pole["config"]["error"] is None


async def test_metrics_show_ingest_fleet_and_the_database_pool(
    receiver: RunningReceiver, tokens: dict[str, str]
) -> None:
    status_block = {"backlog": {"event": 7, "media": 5}, "oldest_age_s": 30.0, "clock": {"skew_s": -2.5}}
    ok, other = event(1), event(2, "debug")
    await post(receiver.url, batch("pole-1", [ok, other], status_block), tokens["pole"])
    await post(receiver.url, b"not gzip", tokens["pole"])
    await receiver.store.revoke_pole("pole-2")
    async with aiohttp.ClientSession() as s, s.get(receiver.url + "/metrics") as r:
        text = await r.text()
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values[("smartpole_receiver_poles", (("state", "online"),))] == 1
    assert values[("smartpole_receiver_poles", (("state", "revoked"),))] == 1
    assert values[("smartpole_receiver_poles", (("state", "offline"),))] == 0
    assert values[("smartpole_receiver_fleet_worst_backlog_events", ())] == 12
    assert values[("smartpole_receiver_fleet_worst_oldest_age_seconds", ())] == 30.0
    assert values[("smartpole_receiver_fleet_worst_clock_skew_seconds", ())] == 2.5
    assert values[("smartpole_receiver_events_total", (("outcome", "accepted"),))] == 2
    assert values[("smartpole_receiver_ingest_seconds_count", (("transport", "http"),))] >= 1
    assert ("smartpole_receiver_db_connections", (("state", "in_use"),)) in values
    assert values[("smartpole_receiver_db_connections_max", ())] >= 1
    assert ("smartpole_receiver_poles_config_behind", ()) in values


async def test_schema_4_migrates_a_version_2_database(database_url: str, tmp_path: Path) -> None:
    """Data of schema 2 survives; poles whose tokens were all revoked become revoked poles; admins can be added."""
    rows = [
        ("pole", "pole-1", None, 1.0, None),
        ("pole", "pole-2", None, 1.0, 5.0),
        ("reader", None, "dash", 1.0, None),
    ]
    if database_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2):
            for statement in sqlite.MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        for n, (role, pole, name, created, revoked) in enumerate(rows):
            digest = token_hash(f"t{n}")
            db.execute(
                "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (digest, digest[:12], role, pole, name, created, revoked),
            )
        for pole in ("pole-1", "pole-2"):
            db.execute("INSERT INTO poles (pole_id, created_at, last_seen) VALUES (?, 1.0, 2.0)", (pole,))
        db.commit()
        db.close()
    else:
        conn: Any = await asyncpg.connect(database_url)
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2):
            for statement in postgres.MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        for n, (role, pole, name, created, revoked) in enumerate(rows):
            digest = token_hash(f"t{n}")
            await conn.execute(
                "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at, revoked_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                digest,
                digest[:12],
                role,
                pole,
                name,
                created,
                revoked,
            )
        for pole in ("pole-1", "pole-2"):
            await conn.execute("INSERT INTO poles (pole_id, created_at, last_seen) VALUES ($1, 1.0, 2.0)", pole)
        await conn.close()
    store = await open_store(database_url)
    try:
        assert len(await store.list_tokens()) == 3
        one, two = await store.poles()
        assert one.revoked_at is None and one.first_seen == 2.0 and one.config_target == EMPTY_VERSION
        assert two.revoked_at == 5.0
        await store.add_token(token_hash("admin"), "admin", None, "ops")
        info = await store.lookup_token(token_hash("admin"))
        assert info is not None and info.role == "admin"
        assert (await store.fleet_summary(time.time() - 60)).revoked == 1
    finally:
        await store.close()
