"""Onward forwarding: one row per (context -> verdict, rule); fail closed; the policy files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relay.core.errors import RelayError
from relay.policy.forwarding import (
    DEFAULT,
    RULES,
    Context,
    Decision,
    ForwardingPolicy,
    Kind,
    Recipient,
    Verdict,
    block_reply,
    decide,
    decide_all,
    load_forwarding,
    post_with_external_copies,
)
from relay.policy.timing import load_policy

POLICIES = Path(__file__).resolve().parent.parent / "relay" / "policies"
KUBERNETES = POLICIES / "kubernetes-distributors.toml"
OPENWALL = POLICIES / "openwall-distros.toml"

ADV = "ADV-2026-0001"
LIFT = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)  # a Tuesday, 16:00 UTC
BEFORE = LIFT - timedelta(days=7)
AFTER = LIFT + timedelta(hours=1)
LIFT_TEXT = "2026-12-08 16:00 UTC"

BLOCK_ALL = DEFAULT  # outsiders block, member domains need a grant, external Cc distributed
FLAG_ALL = ForwardingPolicy("flag", "grant-only", "distribute-and-report")
ALLOW_DOMAINS = ForwardingPolicy("block", "allow", "distribute-and-report")
REFUSE_CC = ForwardingPolicy("block", "grant-only", "refuse")

ALL_RULES = ("lifted", "list_party", "grant", "terms", "member_domain", "visible_only", "outsider")


def ctx(
    kind: Kind | str,
    *,
    visible_only: bool = False,
    embargoed: bool = True,
    lift_at: datetime | None = LIFT,
    now: datetime = BEFORE,
    address: str = "someone@example.net",
    terms: bool = False,
) -> Context:
    recipient = Recipient(address, Kind(kind), visible_only)
    return Context(ADV, embargoed, lift_at, recipient, now, terms)


def lifted_ctx(kind: Kind, *, visible_only: bool = False) -> Context:
    return ctx(kind, visible_only=visible_only, embargoed=False, now=AFTER)


MEMBER, SENDER, HOLDER, PENDING, DOMAIN, OUTSIDER = (
    Kind.MEMBER,
    Kind.SENDER,
    Kind.GRANT_HOLDER,
    Kind.PENDING_GRANT,
    Kind.MEMBER_DOMAIN,
    Kind.OUTSIDER,
)
DELIVER, BLOCK, FLAG = Verdict.DELIVER, Verdict.BLOCK, Verdict.FLAG

# id: (context, policy, expected verdict, expected deciding rule)
CASES: dict[str, tuple[Context, ForwardingPolicy, Verdict, str]] = {
    # Before the lift: who the recipient is decides.
    "member": (ctx(MEMBER), BLOCK_ALL, DELIVER, "list_party"),
    "sender": (ctx(SENDER), BLOCK_ALL, DELIVER, "list_party"),
    "grant holder": (ctx(HOLDER), BLOCK_ALL, DELIVER, "grant"),
    # Offered a grant, not yet accepted: the terms only.
    "pending grant, its terms": (ctx(PENDING, terms=True), BLOCK_ALL, DELIVER, "terms"),
    "pending grant, a post": (ctx(PENDING), BLOCK_ALL, BLOCK, "outsider"),
    "pending grant, a post, flag": (ctx(PENDING), FLAG_ALL, FLAG, "outsider"),
    "terms to an outsider": (ctx(OUTSIDER, terms=True), BLOCK_ALL, BLOCK, "outsider"),
    "cc pending grant": (ctx(PENDING, visible_only=True), BLOCK_ALL, FLAG, "visible_only"),
    "member domain, grant only": (ctx(DOMAIN), BLOCK_ALL, BLOCK, "outsider"),
    "member domain, grant only, flag": (ctx(DOMAIN), FLAG_ALL, FLAG, "outsider"),
    "member domain, allowed": (ctx(DOMAIN), ALLOW_DOMAINS, DELIVER, "member_domain"),
    "outsider, block": (ctx(OUTSIDER), BLOCK_ALL, BLOCK, "outsider"),
    "outsider, flag": (ctx(OUTSIDER), FLAG_ALL, FLAG, "outsider"),
    "outsider, domains allowed": (ctx(OUTSIDER), ALLOW_DOMAINS, BLOCK, "outsider"),
    "outsider, no lift time": (ctx(OUTSIDER, lift_at=None), BLOCK_ALL, BLOCK, "outsider"),
    # The lift job has not run yet: the embargo flag, not the clock, is the state of record.
    "outsider, lift overdue": (ctx(OUTSIDER, now=AFTER), BLOCK_ALL, BLOCK, "outsider"),
    # Only in To/Cc: never blockable, so always reported unless the address may receive it.
    "cc outsider, distribute": (ctx(OUTSIDER, visible_only=True), BLOCK_ALL, FLAG, "visible_only"),
    "cc outsider, refuse": (ctx(OUTSIDER, visible_only=True), REFUSE_CC, FLAG, "visible_only"),
    "cc outsider, flag policy": (ctx(OUTSIDER, visible_only=True), FLAG_ALL, FLAG, "visible_only"),
    "cc domain, grant only": (ctx(DOMAIN, visible_only=True), REFUSE_CC, FLAG, "visible_only"),
    "cc domain, allowed": (ctx(DOMAIN, visible_only=True), ALLOW_DOMAINS, DELIVER, "member_domain"),
    "cc member": (ctx(MEMBER, visible_only=True), REFUSE_CC, DELIVER, "list_party"),
    "cc sender": (ctx(SENDER, visible_only=True), REFUSE_CC, DELIVER, "list_party"),
    "cc grant holder": (ctx(HOLDER, visible_only=True), REFUSE_CC, DELIVER, "grant"),
    # After the lift the restriction ends for everyone, whatever the policy.
    **{
        f"lifted {kind}{', cc' if cc else ''}, {name}": (
            lifted_ctx(kind, visible_only=cc),
            policy,
            DELIVER,
            "lifted",
        )
        for kind in Kind
        for cc in (False, True)
        for name, policy in (("block", BLOCK_ALL), ("flag", FLAG_ALL), ("refuse", REFUSE_CC))
    },
    "lifted early": (ctx(OUTSIDER, embargoed=False, now=BEFORE), BLOCK_ALL, DELIVER, "lifted"),
    "never embargoed": (ctx(OUTSIDER, embargoed=False, lift_at=None), BLOCK_ALL, DELIVER, "lifted"),
}


@pytest.mark.parametrize(("context", "policy", "verdict", "rule"), CASES.values(), ids=CASES)
def test_decision_table(
    context: Context, policy: ForwardingPolicy, verdict: Verdict, rule: str
) -> None:
    decision = decide(context, policy)
    assert (decision.verdict, decision.rule) == (verdict, rule)
    assert decision.evaluated == ALL_RULES[: ALL_RULES.index(rule) + 1]
    assert decision.context == context
    assert ADV in decision.reason
    if context.lift_at is not None:
        assert LIFT_TEXT in decision.reason
    if verdict is not DELIVER:
        assert context.recipient.address in decision.reason


# --- what the reasons say -------------------------------------------------------------------


def test_lift_reasons_say_when_and_how_the_embargo_ended() -> None:
    assert (
        decide(lifted_ctx(OUTSIDER), DEFAULT).reason
        == f"the embargo on {ADV} was lifted at {LIFT_TEXT}"
    )
    early = decide(ctx(OUTSIDER, embargoed=False, now=BEFORE), DEFAULT)
    assert early.reason == f"the embargo on {ADV} was lifted early (planned for {LIFT_TEXT})"
    never = decide(ctx(OUTSIDER, embargoed=False, lift_at=None), DEFAULT)
    assert never.reason == f"{ADV} is not under embargo"


def test_block_and_flag_reasons_name_the_outcome() -> None:
    blocked = decide(ctx(OUTSIDER, address="eve@example.com"), BLOCK_ALL).reason
    assert blocked == (
        f"eve@example.com is not a member, an authorised sender, nor holder of a grant for "
        f"{ADV} before the lift at {LIFT_TEXT}; blocked"
    )
    assert "reported as a leak" in decide(ctx(OUTSIDER), FLAG_ALL).reason
    assert "in a member's domain but holds no grant" in decide(ctx(DOMAIN), BLOCK_ALL).reason
    assert "no lift time is set yet" in decide(ctx(OUTSIDER, lift_at=None), BLOCK_ALL).reason


def test_external_copy_reason_says_who_sent_it_and_what_happens_to_the_post() -> None:
    refused = decide(ctx(OUTSIDER, visible_only=True), REFUSE_CC).reason
    assert "sender's own mail system, not the relay" in refused
    assert "refuses the post" in refused
    kept = decide(ctx(OUTSIDER, visible_only=True), BLOCK_ALL).reason
    assert "still distributes the post to the list" in kept


def test_lift_time_is_shown_in_utc_whatever_zone_it_was_given_in() -> None:
    berlin = LIFT.astimezone(ZoneInfo("Europe/Berlin"))
    reason = decide(ctx(OUTSIDER, lift_at=berlin), BLOCK_ALL).reason
    assert LIFT_TEXT in reason and "17:00" not in reason


# --- fail closed ----------------------------------------------------------------------------


def boom(context: Context, policy: ForwardingPolicy) -> Decision | None:
    raise RuntimeError("database gone")


def silent(context: Context, policy: ForwardingPolicy) -> Decision | None:
    return None


def test_a_raising_rule_blocks_and_is_named() -> None:
    decision = decide(ctx(MEMBER), DEFAULT, rules=(silent, boom, *RULES))
    assert (decision.verdict, decision.rule, decision.evaluated) == (
        BLOCK,
        "boom",
        ("silent", "boom"),
    )
    assert "rule boom failed (RuntimeError: database gone)" in decision.reason
    assert "someone@example.net" in decision.reason and ADV in decision.reason


def test_no_decision_blocks() -> None:
    for rules in ((), (silent, silent)):
        decision = decide(ctx(MEMBER), DEFAULT, rules=rules)
        assert decision.verdict == BLOCK and decision.rule == "default"
        assert decision.reason.startswith("no rule decided")
        assert decision.evaluated == tuple(r.__name__ for r in rules)


def test_a_recipient_of_no_known_kind_is_blocked() -> None:
    stray = Context(ADV, True, LIFT, Recipient("x@example.net", "partner"), BEFORE)  # type: ignore[arg-type]
    decision = decide(stray, DEFAULT)
    assert (decision.verdict, decision.rule, decision.evaluated) == (BLOCK, "default", ALL_RULES)


def test_a_naive_lift_time_blocks_even_a_member() -> None:
    naive = LIFT.replace(tzinfo=None)
    member = decide(ctx(MEMBER, lift_at=naive), DEFAULT)
    assert (member.verdict, member.rule) == (BLOCK, "list_party")
    assert "failed (ValueError" in member.reason
    # After the lift, comparing a naive lift time with an aware `now` fails the same way.
    after = decide(ctx(OUTSIDER, embargoed=False, lift_at=naive, now=AFTER), DEFAULT)
    assert (after.verdict, after.rule) == (BLOCK, "lifted")


def test_a_policy_value_outside_the_vocabulary_blocks() -> None:
    bogus = ForwardingPolicy("ignore", "grant-only", "distribute-and-report")  # type: ignore[arg-type]
    decision = decide(ctx(OUTSIDER), bogus)
    assert (decision.verdict, decision.rule) == (BLOCK, "outsider")
    assert "KeyError" in decision.reason


# --- one message, several recipients; SMTP replies -------------------------------------------


def test_decide_all_keeps_the_recipients_order() -> None:
    recipients = [
        Recipient("sec@distro.example", MEMBER),
        Recipient("eve@example.com", OUTSIDER),
        Recipient("dev@distro.example", DOMAIN),
        Recipient("cc@upstream.example", OUTSIDER, visible_only=True),
    ]
    before = decide_all(
        ADV, embargoed=True, lift_at=LIFT, recipients=recipients, now=BEFORE, policy=REFUSE_CC
    )
    assert [(d.context.recipient.address, d.verdict, d.rule) for d in before] == [
        ("sec@distro.example", DELIVER, "list_party"),
        ("eve@example.com", BLOCK, "outsider"),
        ("dev@distro.example", BLOCK, "outsider"),
        ("cc@upstream.example", FLAG, "visible_only"),
    ]
    after = decide_all(ADV, embargoed=False, lift_at=LIFT, recipients=recipients, now=AFTER)
    assert [d.verdict for d in after] == [DELIVER] * 4


def test_block_reply_names_the_address_advisory_and_lift_time() -> None:
    decision = decide(ctx(OUTSIDER, address="eve@example.com"), DEFAULT)
    assert block_reply(decision) == (
        f"550 5.7.1 <eve@example.com> may not receive {ADV} before {LIFT_TEXT}"
    )
    unset = decide(ctx(OUTSIDER, address="eve@example.com", lift_at=None), DEFAULT)
    assert (
        block_reply(unset) == f"550 5.7.1 <eve@example.com> may not receive {ADV} before its lift"
    )


def test_block_reply_covers_a_refused_external_copy() -> None:
    decision = decide(ctx(OUTSIDER, visible_only=True, address="cc@upstream.example"), REFUSE_CC)
    assert block_reply(decision).startswith("550 5.7.1 <cc@upstream.example> may not receive")


def test_block_reply_cannot_be_split_by_the_address() -> None:
    decision = decide(ctx(OUTSIDER, address="eve@example.com>\r\n250 2.0.0 ok"), DEFAULT)
    reply = block_reply(decision)
    assert "\r" not in reply and "\n" not in reply
    assert reply.startswith("550 5.7.1 <eve@example.com>??250 2.0.0 ok>")


@pytest.mark.parametrize(
    "context",
    [ctx(MEMBER), ctx(OUTSIDER, embargoed=False, now=AFTER), ctx(OUTSIDER)],
    ids=["deliver", "lifted", "flag"],
)
def test_block_reply_refuses_decisions_that_are_not_blocks(context: Context) -> None:
    decision = decide(context, FLAG_ALL)
    with pytest.raises(ValueError, match="no SMTP refusal"):
        block_reply(decision)


def test_post_with_external_copies_follows_the_policy() -> None:
    assert post_with_external_copies(DEFAULT) == "distribute"
    assert post_with_external_copies(REFUSE_CC) == "refuse"


# --- the [forwarding] table -----------------------------------------------------------------


def test_shipped_policies_load_with_the_expected_rules() -> None:
    assert load_forwarding(KUBERNETES) == ForwardingPolicy("block", "grant-only", "refuse")
    assert load_forwarding(OPENWALL) == ForwardingPolicy(
        "block", "grant-only", "distribute-and-report"
    )
    assert post_with_external_copies(load_forwarding(KUBERNETES)) == "refuse"
    assert post_with_external_copies(load_forwarding(OPENWALL)) == "distribute"
    # The same files still satisfy the timing loader, which shares them.
    assert load_policy(KUBERNETES).name == "kubernetes-distributors"
    assert load_policy(OPENWALL).name == "openwall-distros"


def test_no_file_or_no_table_means_the_default(tmp_path: Path) -> None:
    assert load_forwarding(None) == DEFAULT
    assert ForwardingPolicy("block", "grant-only", "distribute-and-report") == DEFAULT
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\n[posting]\nmember_posts = "list"\n')
    assert load_forwarding(path) == DEFAULT


def test_keys_left_out_keep_the_default(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[forwarding]\nexternal_cc = "refuse"\n')
    assert load_forwarding(path) == ForwardingPolicy("block", "grant-only", "refuse")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('outsiders = "allow"', "forwarding.outsiders: Input should be 'block' or 'flag'"),
        ('outsiders = "Block"', "forwarding.outsiders: Input should be 'block' or 'flag'"),
        ("outsiders = 1", "forwarding.outsiders: Input should be 'block' or 'flag'"),
        ('outsider = "block"', "forwarding.outsider: unknown key"),
        ('member_domains = "all"', "forwarding.member_domains: Input should be 'grant-only'"),
        ('external_cc = "report"', "forwarding.external_cc: Input should be"),
        ('external_cc = "refuse"\nflag = true', "forwarding.flag: unknown key"),
    ],
)
def test_malformed_table_names_file_and_key(tmp_path: Path, table: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[forwarding]\n{table}\n")
    with pytest.raises(RelayError, match="invalid policy") as raised:
        load_forwarding(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[forwarding]\noutsiders = "allow"\nexternal_cc = "report"\n')
    with pytest.raises(RelayError) as raised:
        load_forwarding(path)
    assert "forwarding.outsiders" in str(raised.value)
    assert "forwarding.external_cc" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('forwarding = "block"\n', "forwarding: expected a table"),
        ("[forwarding\n", "not valid TOML"),
    ],
)
def test_unreadable_policy_is_explained(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RelayError, match=expected) as raised:
        load_forwarding(path)
    assert str(path) in str(raised.value)


def test_missing_policy_file_is_an_error_not_the_default(tmp_path: Path) -> None:
    with pytest.raises(RelayError, match="policy file not found"):
        load_forwarding(tmp_path / "missing.toml")
