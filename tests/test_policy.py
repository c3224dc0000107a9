"""The one event policy (sync/policy.py): its paths and actions, on the pole's sink and at the receiver."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from gateway.config import PoleConfig
from gateway.recorder import RecordingSink
from receiver.policy import PolicyConfig, ReceiverPolicy
from sync.events import Accepted, NewEvent
from sync.outbox import Outbox, OutboxConfig
from sync.policy import EventPolicy, PathError, PolicyEngine, RedactRule, parse_path
from sync.protocol import WireEvent
from tests.conftest import start_receiver, stop_receiver
from tests.test_receiver import batch, event, post

KEY = b"deployment-plate-secret"


def engine(*rules: tuple[str, str], key: bytes | None = KEY, **policy: Any) -> PolicyEngine:
    redact = [RedactRule(path=path, action=action) for path, action in rules]  # type: ignore[arg-type]
    return PolicyEngine(EventPolicy(redact=redact, **policy), key, "this pole")


def mac(value: str, key: bytes = KEY) -> str:
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_the_default_drops_plate_text_wherever_it_is() -> None:
    data = {"plate_text": "EBY584", "vehicle": {"plate_text": "XY99ZZ", "reads": [{"plate_text": "A1"}]}, "n": 1}
    decision = PolicyEngine(EventPolicy(), None, "this pole").decide("plate_read", data)
    assert decision.refusal is None and decision.redacted == 3
    assert decision.data == {"vehicle": {"reads": [{}]}, "n": 1}
    assert data["plate_text"] == "EBY584", "the producer's own data is left as it was"
    untouched = {"plate_policy": "drop", "people": 2}
    assert PolicyEngine(EventPolicy(), None, "p").decide("presence", untouched).data is untouched


def test_paths_actions_and_the_first_rule_naming_a_field_decides() -> None:
    policy = engine(
        ("data.plate_text", "keep"),
        ("data.**.plate_text", "drop"),
        ("data.plates[*].text", "hash"),
        ("data.owner.*", "hash"),
    )
    data = {
        "plate_text": "KEEPME",
        "lane": {"plate_text": "GONE"},
        "plates": [{"text": "AB12CD", "score": 0.9}, {"text": mac("ALREADY")}],
        "owner": {"name": "x", "age": 40},
    }
    out = policy.decide("plate_read", data).data
    assert out["plate_text"] == "KEEPME" and out["lane"] == {}
    assert out["plates"] == [{"text": mac("AB12CD"), "score": 0.9}, {"text": mac("ALREADY")}], "hashed once only"
    assert out["owner"] == {"name": mac("x"), "age": "hmac-sha256:" + hmac.new(KEY, b"40", hashlib.sha256).hexdigest()}


def test_types_allowed_and_denied_and_rules_per_type() -> None:
    policy = engine(allowed_types=["presence", "debug"], denied_types=["debug"])
    assert policy.decide("presence", {}).refusal is None
    assert "denied by this pole's policy" in (policy.decide("debug", {}).refusal or "")
    assert "not among the types" in (policy.decide("count", {}).refusal or "")
    scoped = PolicyEngine(
        EventPolicy(redact=[RedactRule(path="data.note", action="drop", types=["presence"])]), None, "p"
    )
    assert scoped.decide("presence", {"note": 1}).data == {}
    assert scoped.decide("count", {"note": 1}).data == {"note": 1}


@pytest.mark.parametrize(
    "path", ["plate_text", "data", "data.**", "data.a..b", "data.**.**.x", "data.a[*]", "data.a b", "data.[*].x"]
)
def test_a_bad_path_is_refused_naming_it(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)
    with pytest.raises(ValidationError) as info:
        EventPolicy.model_validate({"redact": [{"path": path}]})
    assert info.value.errors()[0]["loc"] == ("redact", 0, "path")


def test_hash_rules_need_a_secret_on_the_pole_and_at_the_receiver() -> None:
    hashing = {"redact": [{"path": "data.plate_text", "action": "hash"}]}
    with pytest.raises(ValidationError, match="privacy.plates.secret"):
        PoleConfig.model_validate({"policy": hashing})
    config = PoleConfig.model_validate({"policy": hashing, "privacy": {"plates": {"secret": "s" * 16}}})
    assert config.policy_key() == b"s" * 16
    with pytest.raises(ValidationError, match="SMARTPOLE_POLICY_SECRET"):
        PolicyConfig.model_validate(hashing)
    PolicyConfig.model_validate({**hashing, "secret": "r" * 16})


def wire(type_: str = "plate_read", **data: Any) -> WireEvent:
    return WireEvent.model_validate({**event(1, type_, **data), "ts": time.time()})


def test_the_receiver_can_only_be_stricter() -> None:
    secret = "receiver-secret-0123"
    rx = ReceiverPolicy(
        PolicyConfig(
            denied_types=["debug"],
            forbid_plate_text=False,
            secret=SecretStr(secret),
            redact=[RedactRule(path="data.**.plate_text", action="hash"), RedactRule(path="data.owner", action="keep")],
        )
    )
    pole = engine(("data.owner", "drop"))
    dropped = pole.decide("plate_read", {"owner": "x", "lane": 2}).data
    verdict = rx.apply(wire(**dropped), time.time())
    assert verdict.refusal is None and verdict.event.data == {"lane": 2}, "a keep at the receiver gives nothing back"
    # A hash the pole made stays the pole's; the receiver hashes plain values with its own secret.
    hashed_at_pole = mac("EBY584")
    verdict = rx.apply(wire(plate_text=hashed_at_pole, nested={"plate_text": "EBY584"}), time.time())
    assert verdict.event.data["plate_text"] == hashed_at_pole
    assert verdict.event.data["nested"]["plate_text"] == mac("EBY584", secret.encode()) != hashed_at_pole
    assert rx.apply(wire("debug"), time.time()).kind == "type"
    assert rx.apply(wire(n=1).model_copy(update={"ts": time.time() + 2e5}), time.time()).kind == "future"


def test_the_receiver_refuses_plain_plate_text_anywhere_unless_told_not_to() -> None:
    strict = ReceiverPolicy(PolicyConfig())
    verdict = strict.apply(wire(vehicle={"plate_text": "EBY584"}), time.time())
    assert verdict.kind == "plate_text" and "plate_text" in (verdict.refusal or "")
    assert strict.apply(wire(plate_text=mac("EBY584")), time.time()).refusal is None, "a hash is not plain text"
    lax = ReceiverPolicy(PolicyConfig(forbid_plate_text=False))
    verdict = lax.apply(wire(plate_text="EBY584", n=1), time.time())
    assert verdict.refusal is None and verdict.event.data == {"n": 1}, "the default rule still drops it"


async def test_the_pole_sink_withholds_and_redacts_before_committing(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db", OutboxConfig())
    try:
        seen: list[str] = []
        sink = RecordingSink(outbox, seen.append, engine(("data.**.plate_text", "drop"), denied_types=["debug"]))
        kept = await sink.put(NewEvent("plate_read", {"plate_text": "EBY584", "lane": 1}))
        refused = await sink.put(NewEvent("debug", {}))
        assert refused == Accepted("", 0, "type: 'debug' is denied by this pole's policy")
        many = await sink.put_many([NewEvent("debug", {}), NewEvent("count", {"n": 2}), NewEvent("debug", {})])
        assert [a.withheld is None for a in many] == [False, True, False] and many[1].seq == kept.seq + 1
        records = await outbox.next_batch(10, 1_000_000)
        assert [r.id for r in records] == [kept.id, many[1].id]
        assert '"plate_text"' not in records[0].body and '"lane":1' in records[0].body
        assert seen == ["plate_read", "count"] and sink.withheld["debug"] == 3 and sink.redacted == 1
        assert [e.id for e in sink.recent] == [many[1].id, kept.id]
    finally:
        await outbox.close()


async def test_a_receiver_deny_rule_rejects_what_the_pole_let_through(tmp_path: Path) -> None:
    rx = await start_receiver(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "m", policy=PolicyConfig(denied_types=["x"]))
    try:
        token = await rx.add_pole("pole-1")
        ok, denied = event(1), event(2, "x")
        status, reply = await post(rx.url, batch("pole-1", [ok, denied]), token)
        assert status == 200 and reply["accepted"] == [ok["id"]]
        assert reply["rejected"] == [{"id": denied["id"], "reason": "type: 'x' is denied by this receiver's policy"}]
    finally:
        await stop_receiver(rx)
