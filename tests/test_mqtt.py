"""The MQTT path against real Mosquitto processes: exactly once, in priority order, through broker
restarts, receiver crashes and outages, and only under the pole's own id."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sync.events import NewEvent, Priority
from sync.outbox import Outbox
from sync.protocol import MAC_PROPERTY, batches_topic, compress, encode_batch, message_mac, token_hash
from tests.conftest import ROOT, pg_schema
from tests.mqtt_rig import RECEIVER_PASSWORD, Rig, drain, eventually, rig

RANK = {"alert": 0, "event": 1, "telemetry": 2, "media": 3}


async def fill(outbox: Outbox, per_priority: int) -> set[str]:
    events = [
        NewEvent("reading", {"i": i, "p": p.label}, p)
        for p in (Priority.MEDIA, Priority.TELEMETRY, Priority.EVENT, Priority.ALERT)
        for i in range(per_priority)
    ]
    return {a.id for a in await outbox.put_many(events)}


async def stored_ids(r: Rig) -> list[str]:
    return [e["id"] for e in await r.rx.all_events()]


async def test_batches_arrive_exactly_once_in_priority_order(database_url: str, tmp_path: Path) -> None:
    async with rig(database_url, tmp_path) as r:
        r.start_consumer()
        await r.connected()
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 60)
            uplink = r.uplink(outbox, max_batch_events=20, max_in_flight=1)
            await drain(uplink, outbox)
            got = await r.rx.all_events()
            assert sorted(e["id"] for e in got) == sorted(sent)
            arrival = [(RANK[e["priority"]], e["seq"]) for e in got]
            assert arrival == sorted(arrival), "stored in priority order, then seq"
            assert uplink.state.batches.get("ok", 0) >= 12
        finally:
            await outbox.close()


async def test_several_batches_in_flight_still_send_the_most_important_first(tmp_path: Path) -> None:
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer()
        await r.connected()
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 200)
            await drain(r.uplink(outbox, max_batch_events=20, max_in_flight=4), outbox)
            got = await r.rx.all_events()
            ids = [e["id"] for e in got]
            assert sorted(ids) == sorted(sent) and len(set(ids)) == len(ids)
            position = {e["id"]: n for n, e in enumerate(got)}
            last_alert = max(position[e["id"]] for e in got if e["priority"] == "alert")
            first_media = min(position[e["id"]] for e in got if e["priority"] == "media")
            assert last_alert < first_media
        finally:
            await outbox.close()


async def test_broker_killed_and_restarted_mid_stream_loses_nothing(tmp_path: Path) -> None:
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer()
        await r.connected()
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 1500)
            # The cap's bucket lets 64 kB go at once: a ~150 kB backlog at 20 kB/s leaves most of it to go after
            # the kill (a backlog the burst held could all be gone before the kill on a busy machine).
            uplink = r.uplink(outbox, max_batch_events=25, bandwidth_bytes_per_s=20_000)
            task = asyncio.create_task(uplink.run())
            await eventually(lambda: len(sent) - outbox.backlog > 200, 30, "part of the backlog delivered")
            r.broker.stop(signal.SIGKILL)
            await asyncio.sleep(1.0)
            assert outbox.backlog > 0, "the broker died before the end"
            r.broker.start()
            await eventually(lambda: outbox.backlog == 0, 60, f"drained after the restart; {uplink.state}")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ids = await stored_ids(r)
            assert sorted(ids) == sorted(sent), "every accepted event stored exactly once"
            assert uplink.state.batches.get("network_error", 0) >= 1
        finally:
            await outbox.close()


async def test_all_receivers_down_then_back_messages_wait_in_the_broker(tmp_path: Path) -> None:
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer()
        await r.connected()
        await r.stop_consumer()  # its persistent session stays, subscribed, in the broker
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 50)
            uplink = r.uplink(outbox, max_batch_events=20, timeout_s=1)
            task = asyncio.create_task(uplink.run())
            await eventually(lambda: uplink.state.batches.get("network_error", 0) >= 2, 20, "unanswered batches")
            assert await stored_ids(r) == [] and outbox.backlog == len(sent)
            r.start_consumer()
            await eventually(lambda: outbox.backlog == 0, 60, f"drained once a receiver is back; {uplink.state}")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ids = await stored_ids(r)
            assert sorted(ids) == sorted(sent)
        finally:
            await outbox.close()


async def test_wrong_password_is_refused_and_reported_as_auth_failure(tmp_path: Path) -> None:
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            await fill(outbox, 2)
            from pydantic import SecretStr

            uplink = r.uplink(outbox, password=SecretStr("not-the-password"), auth_retry_s=30)
            task = asyncio.create_task(uplink.run())
            await eventually(lambda: uplink.state.state == "auth_failed", 15, f"auth failure; {uplink.state}")
            assert "refused" in (uplink.state.last_error or "")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert outbox.backlog == 8
        finally:
            await outbox.close()


async def test_tls_with_the_right_ca_works_and_a_wrong_ca_is_refused(tmp_path: Path) -> None:
    from tests.helpers.broker import make_ca

    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer(url=r.broker.tls_url, ca_file=r.broker.ca[0])
        await r.connected()
        other_ca = make_ca(tmp_path, "other")
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 5)
            wrong = r.uplink(outbox, url=r.broker.tls_url, mqtt={"ca_file": other_ca[0]}, timeout_s=1)
            task = asyncio.create_task(wrong.run())
            await eventually(lambda: wrong.state.batches.get("network_error", 0) >= 2, 20, "TLS refusals")
            assert "CERTIFICATE_VERIFY_FAILED" in (wrong.state.last_error or "").upper().replace(" ", "_")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert outbox.backlog == len(sent)
            await drain(r.uplink(outbox, url=r.broker.tls_url, mqtt={"ca_file": r.broker.ca[0]}), outbox)
            assert sorted(await stored_ids(r)) == sorted(sent)
        finally:
            await outbox.close()


def signed_batch(pole_id: str, key_token: str, events: list[str]) -> tuple[bytes, Properties]:
    """A batch document naming ``pole_id``, signed with the hash of ``key_token``."""
    body = compress(encode_batch(pole_id, "01890a5d-ac96-774b-bcce-b302099a8057", 1.0, events, None))
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = b"01890a5d-ac96-774b-bcce-b302099a8057"
    properties.UserProperty = (MAC_PROPERTY, message_mac(token_hash(key_token), properties.CorrelationData, body))
    return body, properties


EVENT = orjson.dumps(
    {
        "id": "01890a5d-ac96-7000-8000-000000000001",
        "seq": 1,
        "ts": 1.0,
        "type": "forged",
        "priority": "event",
        "location": None,
        "data": {},
        "media": [],
    }
).decode()


async def test_a_pole_cannot_publish_under_another_poles_id(tmp_path: Path) -> None:
    """The broker's ACL drops it; and with a broker that has no ACL, the receiver refuses it."""
    for acl in (True, False):
        workdir = tmp_path / ("acl" if acl else "no-acl")
        async with rig(f"sqlite:///{workdir / 'rx.db'}", workdir, poles=("pole-1", "pole-2"), acl=acl) as r:
            r.start_consumer()
            await r.connected()
            token_1 = r.rx.tokens["pole-1"]
            async with aiomqtt.Client(
                "127.0.0.1",
                r.broker.port,
                username="pole-1",
                password=token_1,
                identifier="pole-1-attacker",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as attacker:
                await attacker.subscribe("smartpole/v1/pole-2/replies", qos=1)
                # Under pole-2's topic, as pole-2, signed with what pole-1 holds.
                body, properties = signed_batch("pole-2", token_1, [EVENT])
                await attacker.publish(batches_topic("pole-2"), body, qos=1, properties=properties)
                # Under its own topic, claiming to be pole-2 inside.
                body, properties = signed_batch("pole-2", token_1, [EVENT])
                await attacker.publish(batches_topic("pole-1"), body, qos=1, properties=properties)
                replies: list[dict[str, object]] = []

                async def collect(into: list[dict[str, object]]) -> None:
                    async for message in attacker.messages:
                        into.append(orjson.loads(message.payload))  # type: ignore[arg-type]

                reader = asyncio.create_task(collect(replies))
                await asyncio.sleep(1.5)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            assert await stored_ids(r) == [], f"acl={acl}: nothing stored"
            handled = r.rx.receiver.ctx.metrics.mqtt_messages
            refused_401 = handled.labels("batches", "401")._value.get()
            refused_403 = handled.labels("batches", "403")._value.get()
            if acl:
                assert refused_401 == 0 and replies == [], "the broker dropped the foreign topic and reply"
                assert refused_403 == 1, "own topic, foreign pole inside: the receiver refuses it"
            else:
                assert refused_401 == 1, "foreign topic passed a broker without ACL; its signature did not"
                assert refused_403 == 1


async def test_a_forged_reply_does_not_settle_a_batch(tmp_path: Path) -> None:
    """Without the receiver (nothing answers), another client answering on the pole's replies topic with
    'accepted' must not make the pole drop its events."""
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path, acl=False) as r:
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 1)
            uplink = r.uplink(outbox, max_batch_events=10, timeout_s=1)
            async with aiomqtt.Client(
                "127.0.0.1",
                r.broker.port,
                username="receiver",
                password=RECEIVER_PASSWORD,
                identifier="forger",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as forger:
                await forger.subscribe("smartpole/v1/pole-1/batches", qos=1)
                task = asyncio.create_task(uplink.run())

                async def forge() -> None:
                    async for message in forger.messages:
                        props = Properties(PacketTypes.PUBLISH)
                        props.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
                        reply = orjson.dumps({"status": 200, "accepted": sorted(sent), "duplicates": []})
                        props.UserProperty = (MAC_PROPERTY, "0" * 64)
                        await forger.publish("smartpole/v1/pole-1/replies", reply, qos=1, properties=props)

                forging = asyncio.create_task(forge())
                await eventually(lambda: uplink.state.batches.get("network_error", 0) >= 2, 20, "unanswered")
                forging.cancel()
                task.cancel()
                await asyncio.gather(task, forging, return_exceptions=True)
            assert outbox.backlog == len(sent), "no event was dropped on a forged reply"
        finally:
            await outbox.close()


async def test_an_uplink_stops_even_if_a_publish_swallows_its_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 aiomqtt's publish (asyncio.wait_for) can swallow a cancellation that lands as the PUBACK
    arrives; the lane must stop all the same, not retry its batch for ever (a hang seen in the suite)."""
    publish = aiomqtt.Client.publish
    publishing = asyncio.Event()

    async def publish_swallowing(self: aiomqtt.Client, *args: Any, **kwargs: Any) -> None:
        publishing.set()
        with contextlib.suppress(asyncio.CancelledError):  # what wait_for does when both land at once
            await asyncio.sleep(0.2)
        await publish(self, *args, **kwargs)

    monkeypatch.setattr(aiomqtt.Client, "publish", publish_swallowing)
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            await fill(outbox, 2)
            uplink = r.uplink(outbox, max_batch_events=10, timeout_s=1)  # no receiver: nothing answers
            task = asyncio.create_task(uplink.run())
            await asyncio.wait_for(publishing.wait(), 20)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done and task.cancelled(), "the uplink went on after it was cancelled"
            assert outbox.backlog == 8
        finally:
            await outbox.close()


async def test_a_consumer_stops_even_if_its_connect_swallows_its_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's side: cancelled as its CONNACK lands, the consumer must stop (and disconnect), not go on
    consuming, or a receiver's SIGTERM would wait for it for ever."""
    aenter = aiomqtt.Client.__aenter__
    connecting = asyncio.Event()
    clients: list[aiomqtt.Client] = []

    async def aenter_swallowing(self: aiomqtt.Client) -> aiomqtt.Client:
        connecting.set()
        clients.append(self)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        return await aenter(self)

    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        monkeypatch.setattr(aiomqtt.Client, "__aenter__", aenter_swallowing)
        r.start_consumer()
        await asyncio.wait_for(connecting.wait(), 10)
        _, task = r.consumers.pop("rx-a")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done and task.cancelled(), "the consumer went on after it was cancelled"
        assert clients[0]._disconnected.done(), "its connection was left open"  # noqa: SLF001


class ReceiverProcess:
    """``smartpole receiver`` in a child process with the MQTT consumer on."""

    def __init__(
        self, workdir: Path, database_url: str, broker_url: str, client_id: str, session_expiry_s: int = 5
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "receiver.toml"
        self.config.write_text(
            f'[receiver]\nport = 0\nmedia_dir = "{workdir / "media"}"\n\n'
            f'[mqtt]\nenabled = true\nurl = "{broker_url}"\nclient_id = "{client_id}"\nmax_in_flight = 8\n'
            f"session_expiry_s = {session_expiry_s}\n\n"
            '[logging]\nformat = "json"\n'
        )
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), SMARTPOLE_RECEIVER_DATABASE_URL=database_url)
        self.env["SMARTPOLE_MQTT_PASSWORD"] = RECEIVER_PASSWORD
        self.log = workdir / "receiver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smartpole.cli", "receiver", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )

    def connected(self) -> bool:
        return self.log.exists() and self.log.read_text().count("mqtt_consumer_connected") >= 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_a_receiver_killed_mid_stream_while_another_carries_on(tmp_path: Path) -> None:
    async with pg_schema() as url, rig(url, tmp_path) as r:
        receivers = [ReceiverProcess(tmp_path / name, url, r.broker.url, name) for name in ("rx-1", "rx-2")]
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            for receiver in receivers:
                receiver.start()
            await eventually(lambda: all(x.connected() for x in receivers), 30, "both receivers connected")
            sent = await fill(outbox, 400)
            uplink = r.uplink(outbox, max_batch_events=20, bandwidth_bytes_per_s=80_000, timeout_s=1.5)
            task = asyncio.create_task(uplink.run())
            await eventually(lambda: len(sent) - outbox.backlog > 150, 30, "part of the backlog delivered")
            receivers[0].kill()
            await eventually(lambda: outbox.backlog == 0, 90, f"drained by the survivor; {uplink.state}")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ids = await stored_ids(r)
            assert sorted(ids) == sorted(sent), "every accepted event stored exactly once"
            survivor_log = receivers[1].log.read_text()
            assert "mqtt_consumer_connected" in survivor_log
        finally:
            for receiver in receivers:
                receiver.kill()
            await outbox.close()


async def test_add_pole_prints_a_password_line_the_broker_accepts(
    tmp_path: Path, smartpole_cmd: list[str], child_env: dict[str, str]
) -> None:
    from tests.helpers.broker import Broker

    config = tmp_path / "receiver.toml"
    config.write_text(f'[receiver]\ndatabase_url = "sqlite:///{tmp_path / "rx.db"}"\n')
    result = subprocess.run(
        [*smartpole_cmd, "receiver", "add-pole", "pole-9", "--mosquitto", "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token, line = result.stdout.splitlines()
    assert line.startswith("pole-9:$7$") and token not in line
    broker = Broker(tmp_path / "broker", {})
    (broker.directory / "passwd").write_text(line + "\n")
    broker.start()
    try:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="pole-9", password=token, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish("smartpole/v1/pole-9/batches", b"{}", qos=1)
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, username="pole-9", password=token[:-1] + "x"):
                raise AssertionError("a wrong password was accepted")
        except aiomqtt.MqttError as exc:
            assert "not authori" in str(exc).lower() or "bad user name" in str(exc).lower(), exc
    finally:
        broker.stop()


async def test_a_real_pole_daemon_syncs_through_the_broker_and_survives_sigkill(tmp_path: Path) -> None:
    """``smartpole run`` with ``[uplink] kind = "mqtt"``: events posted to its ingest API reach the
    receiver through Mosquitto exactly once, across a SIGKILL of the pole."""
    import aiohttp

    from tests.helpers.pole import PoleProcess
    from tests.test_end_to_end import post_event

    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer()
        await r.connected()
        (tmp_path / "pole").mkdir()
        pole = PoleProcess(
            tmp_path / "pole",
            r.broker.url,
            r.rx.tokens["pole-1"],
            uplink={"kind": "mqtt", "url": r.broker.url, "timeout_s": 2.0, "max_batch_events": 5},
        )
        accepted: set[str] = set()
        await asyncio.to_thread(pole.start)
        try:
            async with aiohttp.ClientSession() as s:
                for i in range(30):
                    event_id = await post_event(s, pole, i, ("alert", "event", "telemetry")[i % 3])
                    if event_id is not None:
                        accepted.add(event_id)
                    if i == 15:
                        await asyncio.to_thread(pole.kill)
                        await asyncio.to_thread(pole.start)

            async def all_there() -> bool:
                return accepted <= set(await stored_ids(r))

            await eventually(all_there, 60, "every accepted event stored")
            ids = await stored_ids(r)
            assert len(ids) == len(set(ids)), "nothing stored twice"
        finally:
            assert await asyncio.to_thread(pole.stop) == 0


def test_the_example_broker_config_runs_with_tls_passwords_and_the_acl(tmp_path: Path) -> None:
    """config/mosquitto/mosquitto.conf as shipped, with its paths and ports moved into the test."""
    from tests.helpers.broker import free_port, make_ca, make_server_cert

    ca = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca)
    passwd = tmp_path / "smartpole.passwd"
    passwd.write_text((ROOT / "config/mosquitto/passwd.example").read_text())
    tls_port, plain_port = free_port(), free_port()
    (tmp_path / "data").mkdir()
    text = (ROOT / "config/mosquitto/mosquitto.conf").read_text()
    for old, new in {
        "/etc/mosquitto/smartpole.passwd": str(passwd),
        "/etc/mosquitto/smartpole.acl": str(ROOT / "config/mosquitto/acl"),
        "/var/lib/mosquitto/": f"{tmp_path / 'data'}/",
        "/etc/mosquitto/certs/ca.crt": str(ca[0]),
        "/etc/mosquitto/certs/broker.crt": str(cert),
        "/etc/mosquitto/certs/broker.key": str(key),
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {plain_port} 127.0.0.1",
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {__import__('getpass').getuser()}\n{text}")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.PIPE)
    try:

        async def connect() -> None:
            import ssl

            context = ssl.create_default_context(cafile=str(ca[0]))
            for _ in range(100):
                try:
                    async with aiomqtt.Client(
                        "127.0.0.1",
                        tls_port,
                        username="pole-0001",
                        password="example-password-do-not-use",
                        tls_context=context,
                        protocol=aiomqtt.ProtocolVersion.V5,
                    ) as client:
                        await client.publish("smartpole/v1/pole-0001/batches", b"{}", qos=1)
                        return
                except aiomqtt.MqttError as exc:
                    if "refused" not in str(exc).lower() and "errno 111" not in str(exc).lower():
                        raise
                    await asyncio.sleep(0.1)
            raise AssertionError(f"broker did not come up: {broker.stderr}")

        asyncio.run(connect())
    finally:
        broker.terminate()
        broker.wait(10)


async def test_an_unreadable_message_gets_a_reply_naming_why_and_the_consumer_carries_on(tmp_path: Path) -> None:
    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer()
        await r.connected()
        token = r.rx.tokens["pole-1"]
        key = token_hash(token)
        replies: list[dict[str, object]] = []
        async with aiomqtt.Client(
            "127.0.0.1",
            r.broker.port,
            username="pole-1",
            password=token,
            identifier="pole-1-raw",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as pole:
            await pole.subscribe("smartpole/v1/pole-1/replies", qos=1)
            bad = {
                b"not-json": b"this is not json",
                b"bomb": compress(b"[" * 1000 + b"]" * 1000),
                b"not-gzip": b"\x1f\x8b\x08\x00garbage",
            }
            for correlation, payload in bad.items():
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = correlation
                properties.UserProperty = (MAC_PROPERTY, message_mac(key, correlation, payload))
                await pole.publish(batches_topic("pole-1"), payload, qos=1, properties=properties)
            async with asyncio.timeout(10):
                async for message in pole.messages:
                    replies.append(orjson.loads(message.payload))  # type: ignore[arg-type]
                    if len(replies) == len(bad):
                        break
        assert sorted(reply["status"] for reply in replies) == [400, 400, 400]  # type: ignore[type-var]
        assert all(reply["error"] for reply in replies)
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            sent = await fill(outbox, 3)
            await drain(r.uplink(outbox), outbox)
            assert sorted(await stored_ids(r)) == sorted(sent), "the consumer still works"
        finally:
            await outbox.close()


async def test_snapshots_and_clips_travel_through_the_broker(tmp_path: Path) -> None:
    from tests.test_media_checks import real_clip, real_jpeg

    async with rig(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path) as r:
        r.start_consumer()
        await r.connected()
        outbox = await Outbox.open(tmp_path / "outbox.db")
        try:
            jpeg, clip = real_jpeg(5), real_clip()
            await outbox.put(NewEvent("presence", {"people": 1}, Priority.MEDIA, media=(jpeg,)))
            await outbox.put(NewEvent("clip", {"seconds": 0.6}, Priority.MEDIA, media=(clip,)))
            await drain(r.uplink(outbox), outbox)
            media = r.rx.receiver.ctx.media
            assert media.path(hashlib.sha256(jpeg).hexdigest()).read_bytes() == jpeg
            assert media.path(hashlib.sha256(clip).hexdigest(), "video/mp4").read_bytes() == clip
            handled = r.rx.receiver.ctx.metrics.mqtt_messages
            assert handled.labels("media", "201")._value.get() == 2
        finally:
            await outbox.close()
