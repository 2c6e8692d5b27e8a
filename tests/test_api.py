"""The HTTP API end to end: a relay set up as an administrator would (real gpg keys,
members, SQLite or PostgreSQL), served by a real uvicorn server on a loopback port, used
with httpx and a bearer token. Each endpoint's success and its refusals, who the audit
trail says acted (web:<admin>), and the members' notices a moved lift queues.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from relay.app import admin, admins, advisories, membership
from relay.core.times import format_when
from relay.model import (
    AuditEvent,
    Delivery,
    DeliveryStatus,
    HoldReason,
    Message,
    MessageKind,
)
from relay.store import incoming
from relay.store.spool import PAYLOAD, Spool
from tests.support.api import ADMIN, Api, serve_api
from tests.support.keys import KeyFactory
from tests.support.relayhome import CONTACT

ACTIVE = ["api-a@distro-a.example", "api-b@distro-b.example"]
REMOVED = "api-gone@distro-c.example"
PUBLIC = "announce@example.com"
OUTSIDER = "press@news.example"
ME = f"web:{ADMIN}"
V1 = "/api/v1"


@pytest.fixture
def api(tmp_path: Path, keys: KeyFactory) -> Iterator[Api]:
    members = [(a.split("@")[0], a, a) for a in [*ACTIVE, REMOVED]]
    extra = f'[embargo]\npublic_addresses = ["{PUBLIC}"]\n'
    with serve_api(tmp_path, keys, members, extra=extra) as served:
        db = served.console.db
        membership.change_state(db, REMOVED, "remove", "cli:setup", "left the list")
        contact = keys.make("api-contact", CONTACT)
        admin.add_sender(
            db, served.console.crypto, served.relay.settings, CONTACT, contact.public, "cli:setup"
        )
        yield served


def ahead(days: int, hour: int) -> datetime:
    day = (datetime.now(UTC) + timedelta(days=days)).date()
    return datetime.combine(day, time(hour), UTC)


LIFT = ahead(30, 14)


def audit_rows(api: Api, action: str) -> list[AuditEvent]:
    with api.console.db.transaction() as s:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(s.execute(query).scalars())


def notices(api: Api, advisory_id: str) -> list[tuple[Message, list[Delivery]]]:
    with api.console.db.transaction() as s:
        messages = s.execute(
            select(Message)
            .where(Message.advisory_id == advisory_id, Message.kind == MessageKind.NOTICE)
            .order_by(Message.received_at, Message.id)
        ).scalars()
        return [(m, list(m.deliveries)) for m in messages]


def text_of(api: Api, message_id: str) -> str:
    data = Spool(api.console.db).read(message_id, PAYLOAD)
    part = email.message_from_bytes(data, policy=email.policy.default)
    return part.get_content().replace("\r\n", "\n")


def refused(response: Any, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"], response.json()
    assert "Traceback" not in response.text


def create(api: Api, advisory_id: str, lift: str | None = None, **extra: Any) -> Any:
    body = {"id": advisory_id, "title": "Kubelet escape", **extra}
    if lift is not None:
        body["lift"] = lift
    response = api.client.post(f"{V1}/advisories", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def held_post(api: Api, advisory_id: str) -> str:
    """A member's post the list's policy holds for a moderator, as the intake stores one."""
    db = api.console.db
    with db.transaction() as s:
        if advisories.find(s, advisory_id) is None:
            now = datetime.now(UTC)
            advisories.create(s, advisory_id, "T", LIFT, "t", advisories.NO_RULES, now)
    return incoming.accept_post(
        db,
        Spool(db),
        incoming.Post(b"raw\r\n", b"payload\r\n", advisory_id, "src@example.org", "F" * 40, None),
        list_domain="example.org",
        route=lambda session, spool, message_id: incoming.Routing(
            advisory_id, incoming.MEMBERS, HoldReason.MODERATION
        ),
    ).message_id


# Tokens


def _every_operation(api: Api) -> list[tuple[str, str]]:
    doc = api.anonymous.get(f"{V1}/openapi.json").json()
    fill = {"{advisory_id}": "CVE-2026-1", "{message_id}": "m1", "{delivery_id}": "1"}
    fill["{address}"] = ACTIVE[0]
    operations = []
    for path, methods in doc["paths"].items():
        for name, value in fill.items():
            path = path.replace(name, value)
        operations += [(method.upper(), path) for method in methods]
    return operations


def test_every_endpoint_refuses_a_request_without_a_live_token(api: Api) -> None:
    create(api, "CVE-2026-1", "+7d")
    operations = _every_operation(api)
    assert len(operations) == 19
    admins.issue_token(api.console.db, ADMIN, "cli:setup")  # another token stays live
    revoked, secret = admins.issue_token(api.console.db, ADMIN, "cli:setup")
    admins.revoke_token(api.console.db, revoked.id, "cli:setup")
    before = len(audit_rows(api, "advisory.lifted")), api.relay.count(AuditEvent)
    wrong = {"Authorization": "Bearer er_not-a-token"}
    for headers in (
        {},
        wrong,
        {"Authorization": f"Bearer {secret}"},
        {"Authorization": f"Basic {secret}"},
    ):
        for method, path in operations:
            body = {"lift": "+1d", "reason": "r", "text": "t", "title": "t"}
            response = api.anonymous.request(method, path, headers=headers, json=body)
            refused(response, 401, "bearer token")
            assert response.headers["www-authenticate"] == "Bearer"
    assert api.client.get(f"{V1}/advisories/CVE-2026-1").json()["state"] == "embargoed"
    assert (len(audit_rows(api, "advisory.lifted")), api.relay.count(AuditEvent)) == before


def test_a_removed_admins_token_is_refused(api: Api) -> None:
    assert api.client.get(f"{V1}/members").status_code == 200
    admins.add_admin(api.console.db, "bob", "another long password", "cli:setup")
    admins.remove_admin(api.console.db, ADMIN, "web:bob")
    refused(api.client.get(f"{V1}/members"), 401, "unknown or revoked")


def test_unknown_paths_and_methods_answer_in_json(api: Api) -> None:
    refused(api.client.get(f"{V1}/nothing/here"), 404, "no API endpoint")
    refused(api.client.delete(f"{V1}/advisories"), 405, "DELETE is not allowed")
    refused(api.anonymous.get(f"{V1}/nothing"), 401, "bearer token")


# The document


def test_the_openapi_document_describes_every_endpoint_and_its_auth(api: Api) -> None:
    response = api.anonymous.get(f"{V1}/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token issued to an administrator by `relay admin token NAME`.",
    }
    assert set(doc["paths"]) == {
        f"{V1}{p}"
        for p in [
            "/advisories",
            "/advisories/{advisory_id}",
            "/advisories/{advisory_id}/schedule",
            "/advisories/{advisory_id}/confirm",
            "/advisories/{advisory_id}/lift",
            "/advisories/{advisory_id}/cancel",
            "/advisories/{advisory_id}/public-text",
            "/held",
            "/held/{message_id}/release",
            "/held/{message_id}/reject",
            "/deliveries",
            "/deliveries/{delivery_id}/retry",
            "/members",
            "/members/{address}/suspend",
            "/members/{address}/resume",
            "/incidents",
            "/audit",
            "/audit/verify",
        ]
    }
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            assert operation["security"] == [{"bearer": []}], (method, path)
            assert operation["summary"], (method, path)
            answers = operation["responses"]
            assert answers["401"]["content"]["application/json"]["schema"] == error
            if "{" in path:
                assert {"404", "422"} <= set(answers), (method, path)
            if method == "post" and "{" in path:
                assert "409" in answers, (method, path)
            ok = answers.get("200") or answers["201"]
            assert ok["content"]["application/json"]["schema"], (method, path)
    schedule = doc["components"]["schemas"]["ScheduleIn"]["properties"]["lift"]
    assert "Europe/Berlin" in schedule["description"]


# Advisories


@pytest.mark.parametrize(
    ("when", "tz"),
    [
        (f"{LIFT:%Y-%m-%d}T15:00:00+01:00", None),
        (f"{LIFT:%Y-%m-%d} 14:00Z", None),
        (f"{LIFT.astimezone(ZoneInfo('America/New_York')):%Y-%m-%d %H:%M} America/New_York", None),
        (f"{LIFT:%Y-%m-%d} 19:30", "Asia/Kolkata"),
    ],
)
def test_create_reads_a_lift_time_in_any_zone_and_tells_the_members(
    api: Api, when: str, tz: str | None
) -> None:
    extra = {"tz": tz} if tz else {}
    # The countdown is whole seconds left when the server answered: between these two.
    most = (LIFT - datetime.now(UTC)).total_seconds()
    done = create(api, "cve-2026-1000", when, **extra)
    least = (LIFT - datetime.now(UTC)).total_seconds()
    advisory = done["advisory"]
    assert advisory["id"] == "CVE-2026-1000"
    assert advisory["lift_at"] == LIFT.isoformat() == done["new_lift_at"]
    assert advisory["lift_at"].endswith("+00:00")
    assert advisory["created_by"] == ME and advisory["state"] == "embargoed"
    assert int(least) <= advisory["countdown_seconds"] <= most
    assert advisory["countdown"].startswith("in ")
    assert done["moved"] is True and done["notice"] is not None
    [(notice, deliveries)] = notices(api, "CVE-2026-1000")
    assert notice.id == done["notice"]
    assert sorted(d.recipient for d in deliveries) == ACTIVE  # not the removed member
    [row] = audit_rows(api, "advisory.created")
    assert (row.actor, row.subject) == (ME, "advisory:CVE-2026-1000")


def test_create_refusals_change_nothing(api: Api) -> None:
    url = f"{V1}/advisories"
    day = f"{LIFT:%Y-%m-%d}"
    no_zone = api.client.post(
        url, json={"id": "CVE-2026-101", "title": "T", "lift": f"{day} 14:00"}
    )
    refused(no_zone, 422, "has no time zone: add an offset (+01:00 or Z)")
    assert '"tz"' in no_zone.json()["error"] and "--tz" not in no_zone.json()["error"]
    refused(api.client.post(url, json={"title": "T", "lift": "soon"}), 422, "cannot read 'soon'")
    refused(api.client.post(url, json={"title": "T", "lift": "2020-01-01 10:00Z"}), 422, "future")
    refused(
        api.client.post(url, json={"title": "T", "lift": f"{day} 14:00", "tz": "Mars/Base"}),
        422,
        "unknown time zone",
    )
    refused(api.client.post(url, json={"title": "   "}), 422, "needs a title")
    refused(api.client.post(url, json={"id": "no spaces", "title": "T"}), 422, "not a usable")
    refused(api.client.post(url, json={"lift": "+1d"}), 422, "body.title: Field required")
    refused(api.client.post(url, json={"title": "T", "x": 1}), 422, "body.x: Extra inputs")
    refused(
        api.client.post(url, content=b"{", headers={"content-type": "application/json"}),
        422,
        "JSON",
    )
    refused(api.client.post(url, json={"title": "a\x00b"}), 422, "body.title")
    assert api.client.get(url, params={"include_closed": True}).json() == []
    create(api, "CVE-2026-101")
    refused(api.client.post(url, json={"id": "cve-2026-101", "title": "T"}), 409, "exists already")
    assert len(audit_rows(api, "advisory.created")) == 1


def test_list_and_show(api: Api) -> None:
    create(api, "CVE-2026-110", LIFT.isoformat())
    create(api, "CVE-2026-111", (LIFT - timedelta(days=2)).isoformat())
    create(api, "CVE-2026-112")
    listed = api.client.get(f"{V1}/advisories").json()
    assert [a["id"] for a in listed] == ["CVE-2026-111", "CVE-2026-110", "CVE-2026-112"]
    assert listed[2]["lift_at"] is None and listed[2]["countdown_seconds"] is None

    shown = api.client.get(f"{V1}/advisories/cve-2026-110").json()
    assert shown["id"] == "CVE-2026-110" and shown["lift_at"] == LIFT.isoformat()
    assert shown["pending_changes"] == []
    assert [(r["action"], r["actor"]) for r in shown["history"]] == [("advisory.created", ME)]
    assert shown["history"][0]["at"].endswith("+00:00")
    assert sorted(d["recipient"] for d in shown["deliveries"]) == ACTIVE
    assert {d["kind"] for d in shown["deliveries"]} == {"notice"}
    assert sorted(c["member"] for c in shown["contributions"]) == ACTIVE
    refused(api.client.get(f"{V1}/advisories/CVE-1999-1"), 404, "no advisory 'CVE-1999-1'")
    refused(api.client.get(f"{V1}/advisories/a%00b"), 422, "path.advisory_id")


def test_moving_a_lift_is_audited_and_tells_every_active_member(api: Api) -> None:
    create(api, "CVE-2026-120")
    first = ahead(20, 16)
    url = f"{V1}/advisories/CVE-2026-120/schedule"
    berlin = first.astimezone(ZoneInfo("Europe/Berlin"))
    done = api.client.post(url, json={"lift": f"{berlin:%Y-%m-%d %H:%M} Europe/Berlin"})
    assert done.status_code == 200, done.text
    assert (done.json()["old_lift_at"], done.json()["new_lift_at"]) == (None, first.isoformat())
    moved = ahead(27, 16)
    body = {"lift": f"{moved:%Y-%m-%d}T21:30:00+05:30", "reason": "the fix needs a week"}
    change = api.client.post(url, json=body).json()
    assert change["moved"] is True and change["advisory"]["lift_at"] == moved.isoformat()

    [row] = audit_rows(api, "advisory.moved")
    assert (row.actor, row.subject) == (ME, "advisory:CVE-2026-120")
    assert row.detail is not None
    assert (row.detail["old"], row.detail["new"], row.detail["reason"]) == (
        first.isoformat(),
        moved.isoformat(),
        "the fix needs a week",
    )
    _, (message, deliveries) = notices(api, "CVE-2026-120")  # the first told of the set
    assert message.id == change["notice"]
    assert sorted(d.recipient for d in deliveries) == ACTIVE
    text = text_of(api, message.id)
    assert f"New lift time: {format_when(moved)}" in text
    assert f"Old lift time: {format_when(first)}" in text
    assert "Reason: the fix needs a week" in text

    again = api.client.post(url, json={"lift": moved.isoformat()}).json()
    assert again["moved"] is False and again["notice"] is None
    assert len(notices(api, "CVE-2026-120")) == 2

    refused(api.client.post(url, json={"lift": f"{moved:%Y-%m-%d} 10:00"}), 422, "no time zone")
    past = api.client.post(url, json={"lift": "2020-01-01T16:00:00Z"})
    refused(past, 422, "is not in the future")
    refused(api.client.post(url, json={}), 422, "body.lift: Field required")
    refused(api.client.post(f"{V1}/advisories/CVE-1999-2/schedule", json=body), 404, "no advisory")
    assert api.client.get(f"{V1}/advisories/CVE-2026-120").json()["lift_at"] == moved.isoformat()
    assert len(audit_rows(api, "advisory.moved")) == 1


def test_lift_happens_once_and_closes_the_advisory(api: Api) -> None:
    create(api, "CVE-2026-130", LIFT.isoformat())
    url = f"{V1}/advisories/CVE-2026-130"
    done = api.client.post(f"{url}/lift", json={"reason": "embargo broken"})
    assert done.status_code == 200, done.text
    lifted = done.json()
    assert lifted["advisory"]["state"] == "lifted" and lifted["advisory"]["countdown"] is None
    assert lifted["advisory"]["lifted_at"].endswith("+00:00")
    assert len(lifted["notices"]) == 1
    [row] = audit_rows(api, "advisory.lifted")
    assert row.actor == ME and row.detail is not None and row.detail["reason"] == "embargo broken"

    refused(api.client.post(f"{url}/lift"), 409, "is already lifted at")
    refused(api.client.post(f"{url}/schedule", json={"lift": "+30d"}), 409, "no longer change")
    refused(api.client.post(f"{url}/cancel", json={}), 409, "no longer change")
    refused(api.client.put(f"{url}/public-text", json={"text": "late"}), 409, "no longer change")
    refused(api.client.post(f"{V1}/advisories/CVE-1999-3/lift"), 404, "no advisory")
    assert len(audit_rows(api, "advisory.lifted")) == 1
    assert api.client.get(f"{V1}/advisories").json() == []
    closed = api.client.get(f"{V1}/advisories", params={"include_closed": "true"}).json()
    assert [a["id"] for a in closed] == ["CVE-2026-130"]


def test_cancel_withdraws_the_advisory(api: Api) -> None:
    create(api, "CVE-2026-140", LIFT.isoformat())
    url = f"{V1}/advisories/CVE-2026-140"
    done = api.client.post(f"{url}/cancel", json={"reason": "not a vulnerability"})
    assert done.status_code == 200 and done.json()["state"] == "cancelled"
    [row] = audit_rows(api, "advisory.cancelled")
    assert row.detail is not None
    assert (row.actor, row.detail["reason"]) == (ME, "not a vulnerability")
    refused(api.client.post(f"{url}/cancel"), 409, "was cancelled")
    refused(api.client.post(f"{url}/lift"), 409, "was cancelled")


def test_public_text_shows_only_its_length_and_goes_out_at_the_lift(api: Api) -> None:
    create(api, "CVE-2026-150", LIFT.isoformat())
    url = f"{V1}/advisories/CVE-2026-150"
    text = "Kubernetes security advisory CVE-2026-150.\nUpgrade to 1.99.1.\n"
    done = api.client.put(f"{url}/public-text", json={"text": text})
    assert done.status_code == 200, done.text
    assert (done.json()["public_release"], done.json()["public_text_chars"]) == (True, len(text))
    shown = api.client.get(url)
    assert "Upgrade" not in shown.text and shown.json()["public_text_chars"] == len(text)
    [row] = audit_rows(api, "advisory.public_text")
    assert row.actor == ME and "Upgrade" not in json.dumps(row.detail)
    refused(api.client.put(f"{url}/public-text", json={"text": "\n \n"}), 422, "is empty")
    refused(api.client.put(f"{url}/public-text", json={}), 422, "body.text")

    assert len(api.client.post(f"{url}/lift").json()["notices"]) == 2
    with api.console.db.transaction() as s:
        [public] = s.execute(select(Delivery).where(Delivery.recipient == PUBLIC)).scalars()
        assert public.plaintext_allowed
        message_id = public.message_id
    assert text_of(api, message_id) == text


def test_confirm_makes_the_earlier_lift_a_signed_post_asked_for(api: Api) -> None:
    from relay.app import confirmations

    create(api, "CVE-2026-160", LIFT.isoformat())
    url = f"{V1}/advisories/CVE-2026-160/confirm"
    refused(api.client.post(url), 409, "no change of CVE-2026-160 waits")
    earlier = LIFT - timedelta(days=3)
    db, spool, settings = api.console.db, api.console.spool, api.relay.settings
    with db.transaction() as s:
        advisory = advisories.get(s, "CVE-2026-160")
        confirmations.request(
            s,
            spool,
            settings,
            advisory,
            earlier,
            actor="key:" + "A" * 40,
            message_id=None,
            now=datetime.now(UTC),
        )
    waiting = api.client.get(f"{V1}/advisories/CVE-2026-160").json()["pending_changes"]
    assert [(p["lift_at"], p["old_lift_at"]) for p in waiting] == [
        (earlier.isoformat(), LIFT.isoformat())
    ]
    done = api.client.post(url, json={"reason": "checked with the SRC"})
    assert done.status_code == 200, done.text
    assert done.json()["advisory"]["lift_at"] == earlier.isoformat()
    assert done.json()["change"]["requested_by"] == "key:" + "A" * 40
    [row] = audit_rows(api, "advisory.change_confirmed")
    assert row.actor == ME
    refused(api.client.post(url), 409, "waits for confirmation")
    refused(api.client.post(f"{V1}/advisories/CVE-1999-4/confirm"), 404, "no advisory")


# Held posts, deliveries


def test_held_posts_released_or_rejected(api: Api) -> None:
    first, second = held_post(api, "CVE-2026-170"), held_post(api, "CVE-2026-170")
    held = api.client.get(f"{V1}/held").json()
    assert [(p["id"], p["advisory_id"], p["copies"]) for p in held] == [
        (first, "CVE-2026-170", 2),
        (second, "CVE-2026-170", 2),
    ]
    assert held[0]["received_at"].endswith("+00:00") and held[0]["signer"] == "F" * 40
    assert "payload" not in json.dumps(held)

    released = api.client.post(f"{V1}/held/{first}/release").json()
    assert released == {"message_id": first, "copies": 2}
    refused(api.client.post(f"{V1}/held/{first}/release"), 409, "is waiting for moderation")
    refused(api.client.post(f"{V1}/held/{second}/reject", json={}), 422, "body.reason")
    rejected = api.client.post(f"{V1}/held/{second}/reject", json={"reason": "off topic"})
    assert rejected.json() == {"message_id": second, "copies": 2}
    refused(api.client.post(f"{V1}/held/nope/release"), 404, "no post 'nope'")
    assert api.client.get(f"{V1}/held").json() == []
    [out] = audit_rows(api, "post.released")
    [no] = audit_rows(api, "post.rejected")
    assert (out.actor, out.subject, no.actor) == (ME, first, ME)
    assert no.detail is not None and no.detail["reason"] == "off topic"


def test_deliveries_listed_and_retried(api: Api) -> None:
    post = held_post(api, "CVE-2026-180")
    deliveries = api.client.get(f"{V1}/deliveries").json()
    mine = [d for d in deliveries if d["message_id"] == post]
    assert sorted(d["recipient"] for d in mine) == ACTIVE
    assert {d["status"] for d in mine} == {"held"}
    retried = api.client.post(f"{V1}/deliveries/{mine[0]['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "queued"
    assert retried.json()["next_attempt_at"].endswith("+00:00")
    [row] = audit_rows(api, "delivery.retried")
    assert (row.actor, row.subject) == (ME, str(mine[0]["id"]))
    with api.console.db.transaction() as s:
        s.get_one(Delivery, mine[1]["id"]).status = DeliveryStatus.SENT
    refused(api.client.post(f"{V1}/deliveries/{mine[1]['id']}/retry"), 409, "already sent")
    assert mine[1]["id"] not in [d["id"] for d in api.client.get(f"{V1}/deliveries").json()]
    every = api.client.get(f"{V1}/deliveries", params={"include_sent": True}).json()
    assert mine[1]["id"] in [d["id"] for d in every]
    refused(api.client.post(f"{V1}/deliveries/999999/retry"), 404, "no delivery 999999")
    refused(api.client.post(f"{V1}/deliveries/{2**40}/retry"), 422, "path.delivery_id")
    refused(api.client.post(f"{V1}/deliveries/x/retry"), 422, "path.delivery_id")


# Members, incidents, audit


def test_members_suspended_and_resumed(api: Api) -> None:
    listed = api.client.get(f"{V1}/members").json()
    assert [m["address"] for m in listed] == ACTIVE
    assert listed[0]["usable"] is True and listed[0]["key_count"] == 1
    assert listed[0]["created_at"].endswith("+00:00")
    everyone = api.client.get(f"{V1}/members", params={"include_removed": True}).json()
    assert REMOVED in [m["address"] for m in everyone]
    post = held_post(api, "CVE-2026-190")
    api.client.post(f"{V1}/held/{post}/release")

    url = f"{V1}/members/{ACTIVE[0]}"
    refused(api.client.post(f"{url}/suspend"), 422, "give a reason")
    done = api.client.post(f"{url}/suspend", json={"reason": "key compromised"})
    assert done.json() == {
        "address": ACTIVE[0],
        "old": "active",
        "new": "suspended",
        "cancelled": 1,
    }
    refused(api.client.post(f"{url}/suspend", json={"reason": "again"}), 409, "already suspended")
    [row] = audit_rows(api, "member.suspended")
    assert row.detail is not None and (row.actor, row.detail["reason"]) == (ME, "key compromised")
    resumed = api.client.post(f"{url}/resume", json={"reason": "new key"})
    assert resumed.json()["new"] == "active"
    refused(api.client.post(f"{url}/resume", json={"reason": "x"}), 409, "already active")
    refused(
        api.client.post(f"{V1}/members/{REMOVED}/suspend", json={"reason": "x"}), 409, "removed"
    )
    refused(
        api.client.post(f"{V1}/members/nobody@x.example/suspend", json={"reason": "x"}),
        404,
        "no member",
    )
    refused(
        api.client.post(f"{V1}/members/not-an-address/resume", json={"reason": "x"}),
        422,
        "not an email address",
    )


def test_incidents_listed_and_filtered(api: Api) -> None:
    create(api, "CVE-2026-200", LIFT.isoformat())
    api.relay(
        "incident",
        "report",
        "CVE-2026-200",
        "--member",
        ACTIVE[0],
        "--to",
        OUTSIDER,
        "--note",
        "posted in a public chat",
    )
    [incident] = api.client.get(f"{V1}/incidents").json()
    assert (incident["advisory_id"], incident["member"], incident["recipients"]) == (
        "CVE-2026-200",
        ACTIVE[0],
        [OUTSIDER],
    )
    assert incident["at"].endswith("+00:00") and incident["resolved_at"] is None
    by_member = api.client.get(f"{V1}/incidents", params={"member": ACTIVE[0]}).json()
    assert [i["id"] for i in by_member] == [incident["id"]]
    assert api.client.get(f"{V1}/incidents", params={"member": ACTIVE[1]}).json() == []
    by_advisory = api.client.get(f"{V1}/incidents", params={"advisory": "cve-2026-200"})
    assert [i["id"] for i in by_advisory.json()] == [incident["id"]]
    refused(
        api.client.get(f"{V1}/incidents", params={"member": "nobody@x.example"}), 404, "no member"
    )
    refused(
        api.client.get(f"{V1}/incidents", params={"advisory": "CVE-1999-5"}), 404, "no advisory"
    )
    assert api.client.get(f"{V1}/members").json()[0]["incidents"] == 1


def test_audit_trail_and_its_chain(api: Api) -> None:
    create(api, "CVE-2026-210", LIFT.isoformat())
    create(api, "CVE-2026-211")
    moved = (LIFT + timedelta(days=1)).isoformat()
    api.client.post(
        f"{V1}/advisories/CVE-2026-210/schedule", json={"lift": moved, "reason": "respin"}
    )
    mine = api.client.get(f"{V1}/audit", params={"advisory": "cve-2026-210"}).json()
    assert [(r["action"], r["actor"]) for r in mine] == [
        ("advisory.created", ME),
        ("advisory.moved", ME),
    ]
    assert (mine[1]["old"], mine[1]["new"], mine[1]["reason"]) == (
        LIFT.isoformat(),
        moved,
        "respin",
    )
    everything = api.client.get(f"{V1}/audit", params={"limit": 500}).json()
    assert {"member.added", "member.removed", "notice.queued"} <= {r["action"] for r in everything}
    assert api.client.get(f"{V1}/audit", params={"limit": 1}).json() == everything[-1:]
    refused(api.client.get(f"{V1}/audit", params={"limit": 0}), 422, "query.limit")
    refused(api.client.get(f"{V1}/audit", params={"advisory": "CVE-1999-6"}), 404, "no advisory")

    check = api.client.get(f"{V1}/audit/verify").json()
    assert check["ok"] is True and check["first_bad"] is None
    assert check["rows"] >= len(everything) and len(check["head"]) == 64
    with api.console.db.transaction() as s:  # an edit behind the relay's back
        row = s.get_one(AuditEvent, mine[1]["id"])
        row.actor = "cli:someone-else"
    broken = api.client.get(f"{V1}/audit/verify").json()
    assert (broken["ok"], broken["first_bad"]) == (False, mine[1]["id"])
