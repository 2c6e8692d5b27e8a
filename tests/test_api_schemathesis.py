"""The HTTP API against its own OpenAPI document, property-based (schemathesis).

A real relay (gpg keys, members, an advisory with a lift time, a post held for
moderation, a held delivery) served by a real uvicorn server; schemathesis reads
/api/v1/openapi.json from it and sends each operation generated requests with the bearer
token: both names nobody holds and the ones set up here, so success paths (lifts, moves
that notify the members, suspensions) run too. No answer may be a server error, and
every answer must match the schema the document gives for its status. Every operation
in the document is run.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from relay.app import advisories
from relay.model import Delivery, DeliveryStatus, HoldReason
from relay.store import incoming
from relay.store.spool import Spool
from tests.support.api import Api, serve_api
from tests.support.keys import KeyFactory

MEMBERS = [
    ("st-a", "st-a@distro-a.example", "Distro A"),
    ("st-b", "st-b@distro-b.example", "Distro B"),
]
ADVISORY = "CVE-2026-7001"
OPERATIONS = 19  # every method of every path in the document
# Bodies the relay accepts, sent with the names it holds: a move of the lift notifies the
# members, a suspension cancels deliveries, and so on.
ACCEPTED = {
    "POST /api/v1/advisories/{advisory_id}/schedule": {"lift": "+12d", "reason": "a move"},
    "POST /api/v1/members/{address}/suspend": {"reason": "on leave"},
    "POST /api/v1/members/{address}/resume": {"reason": "back"},
    "POST /api/v1/held/{message_id}/reject": {"reason": "off topic"},
}


def _seed(api: Api) -> dict[str, Any]:
    """Something for each path parameter to name: an advisory, a held post, a delivery."""
    db = api.console.db
    now = datetime.now(UTC)
    with db.transaction() as s:
        advisories.create(
            s, ADVISORY, "Proxy bypass", now + timedelta(days=9), "t", advisories.NO_RULES, now
        )
    post = incoming.accept_post(
        db,
        Spool(db),
        incoming.Post(
            b"raw\r\n", b"payload\r\n", f"{ADVISORY}: bypass", "src@example.org", "F" * 40, None
        ),
        list_domain="example.org",
        route=lambda session, spool, message_id: incoming.Routing(
            ADVISORY, incoming.MEMBERS, HoldReason.MODERATION
        ),
    ).message_id
    with db.transaction() as s:
        delivery = s.query(Delivery).filter(Delivery.message_id == post).first()
        assert delivery is not None and delivery.status == DeliveryStatus.HELD
        delivery_id = delivery.id
    return {
        "advisory_id": ADVISORY,
        "message_id": post,
        "delivery_id": delivery_id,
        "address": MEMBERS[0][1],
    }


def test_every_operation_answers_by_its_schema_and_never_a_server_error(
    tmp_path: Path, keys: KeyFactory
) -> None:
    with serve_api(tmp_path, keys, MEMBERS) as api:
        known = _seed(api)
        auth = {"Authorization": f"Bearer {api.token}"}
        schema = schemathesis.openapi.from_url(f"{api.url}/api/v1/openapi.json")
        answers: Counter[tuple[str, int]] = Counter()
        # First, while the set-up is as made, each accepted body once, named: generated
        # requests that come later may lift or cancel the advisory, and then a move is
        # refused (409), which is right but would leave the success path untried.
        for result in schema.get_all_operations():
            operation = result.ok()
            if (body := ACCEPTED.get(operation.label)) is None:
                continue
            held = {name: known[name] for name in re.findall(r"{(\w+)}", operation.path)}
            case = operation.Case(path_parameters=held, body=body, media_type="application/json")
            response = case.call_and_validate(
                base_url=api.url,
                headers=auth,
                checks=[checks.not_a_server_error, checks.response_schema_conformance],
            )
            assert response.status_code < 300, (operation.label, response.text)
            answers[(operation.label, response.status_code)] += 1
        ran = []
        for result in schema.get_all_operations():
            operation = result.ok()
            names = re.findall(r"{(\w+)}", operation.path)
            # Generated requests, the document's examples, and (for a path with names)
            # requests naming what the relay holds.
            strategies = [
                operation.as_strategy(),
                *schema.get_strategies_from_examples(operation),
            ]
            if names:
                held = {name: known[name] for name in names}
                strategies.append(operation.as_strategy(path_parameters=held))
                if (body := ACCEPTED.get(operation.label)) is not None:
                    strategies.append(operation.as_strategy(path_parameters=held, body=body))
            strategy = st.one_of(strategies)

            @given(case=strategy)
            @settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                response = case.call_and_validate(
                    base_url=api.url,
                    headers=auth,
                    checks=[checks.not_a_server_error, checks.response_schema_conformance],
                )
                answers[(case.operation.label, response.status_code)] += 1

            run()
            ran.append(operation.label)

        assert len(ran) == len(set(ran)) == OPERATIONS
        assert {label for label, _ in answers} == set(ran)  # each one was called
        # Not only refusals: the held names reached the use-cases.
        succeeded = {label for (label, status), _ in answers.items() if status < 300}
        assert {
            "GET /api/v1/advisories/{advisory_id}",
            "POST /api/v1/advisories/{advisory_id}/schedule",
            "POST /api/v1/members/{address}/suspend",
            "GET /api/v1/audit/verify",
        } <= succeeded, sorted(answers.items())
