"""Content matcher: quoted, re-wrapped and partial copies of an embargoed advisory are caught,
whatever dress they wear (the evasion corpus of tests/support/evasion.py, read through
relay/content.py); texts on the same topic that share no text are not."""

from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

import pytest

from relay.leaks.content import read_content
from relay.leaks.matcher import MIN_MATCHED, MIN_SCORE, QUOTED_RUN, STRONG_MATCHED, Matcher
from tests.support.evasion import (
    PAIRS,
    TRANSFORMS,
    advisory_texts,
    evasive_payload,
    evasive_text,
    excerpts,
)

DATA = Path(__file__).parent / "data" / "matcher"
EMBARGOED = "ADV-2026-0042"
CVE = "CVE-2024-10220"
SUBJECT = "[kubernetes] CVE-2024-10220: Arbitrary command execution through gitRepo volume"
REPLY_SUBJECT = "Re: [ADV-2026-0042] gitRepo hooks: fixed images for distributors"
PATCH = "gitrepo-hooks.patch"


def advisory(name: str) -> str:
    """The advisory's own text, without the note on where the copy comes from."""
    text = (DATA / name).read_text()
    marker = "----- issue body (verbatim) -----"
    if marker in text:
        return text.split(marker, 1)[1]
    return text.split("\n\n", 1)[1]  # the e-mails: the source note is the first paragraph


GITREPO = advisory("k8s-CVE-2024-10220-oss-security-email.txt")


def between(text: str, first: str, last: str) -> str:
    start = text.index(first)
    return text[start : text.index(last, start) + len(last)]


# Four sentences of the embargoed advisory, as the SRC wrote them.
EXCERPT = between(
    GITREPO,
    "A security vulnerability was discovered",
    "to assist in awareness and tracking.",
)


def quoted(text: str, width: int, prefix: str = "> ") -> str:
    return "\n".join(prefix + line for line in textwrap.wrap(" ".join(text.split()), width))


NEW_TEXT = """\
Hi Sam,

our platform team asked whether the node images we ship next week need a rebuild. I have not
checked the tarballs yet, but the note below from upstream looks relevant for the clusters that
still run the old storage plugins. Can you look at it before the Thursday sync and tell me what
you think about the rollout order for the three regions?

Thanks,
Priya
"""

FORWARD_HEADER = """\
---------- Forwarded message ---------
From: Kubernetes Security <security@kubernetes.io>
Date: Tue, 3 Mar 2026 09:12:44 +0000
Subject: Re: embargoed notice
To: distributors-announce@kubernetes.io
"""

UNRELATED_NOTE = """\
Hello all,

a short summary of where we are with the kube-apiserver vulnerabilities in Services that came
up last quarter. Multi-tenant clusters remain the main concern: tenants who can create Services
with external IPs or patch the LoadBalancer status could intercept traffic. We restrict the
create verb on such Services with an admission webhook and audit every patch of service status.
For kubelet we are upgrading to the fixed versions; gitRepo volumes are deprecated anyway and we
use an init container to clone the repository. Please report anything unusual to the security
contact. Affected versions and fixed versions are tracked in our internal sheet.

Regards,
the platform security team
"""


@pytest.fixture
def matcher() -> Matcher:
    matcher = Matcher()
    matcher.add(EMBARGOED, GITREPO, subjects=[SUBJECT, REPLY_SUBJECT], identifiers=[CVE])
    matcher.add_attachment(EMBARGOED, PATCH, (DATA / PATCH).read_text())
    return matcher


def only(matches: list, advisory_id: str = EMBARGOED):
    assert [m.advisory_id for m in matches] == [advisory_id], matches
    return matches[0]


def test_forward_of_a_rewrapped_quoted_excerpt_is_caught(matcher: Matcher) -> None:
    message = f"{NEW_TEXT}\n{FORWARD_HEADER}\n{quoted(EXCERPT, 58)}\n"

    match = only(matcher.match(message))

    assert match.score >= MIN_SCORE
    assert match.matched_fingerprints >= MIN_MATCHED
    assert match.sources == ("body",)
    joined = " ".join(match.excerpts)
    assert "gitRepo volume to execute arbitrary commands" in joined  # original wording and case
    assert "> " not in joined  # quote marks are not part of an excerpt
    assert "rollout order" not in joined  # the new text is not reported as leaked


def test_excerpt_with_changed_whitespace_reflowed_to_40_columns_is_caught(
    matcher: Matcher,
) -> None:
    flowed = quoted(EXCERPT.upper(), 40, prefix=">> ")
    flowed = re.sub(r" (\w)", lambda m: "  \t" + m.group(1), flowed, count=40)
    message = f"{NEW_TEXT}\n| quoted twice below\n{flowed}\n"

    match = only(matcher.match(message))

    assert match.score >= MIN_SCORE
    assert match.matched_fingerprints >= MIN_MATCHED


@pytest.mark.parametrize(
    ("first", "last", "wording"),
    [
        (
            "This CVE affects",
            "vulnerable\nto this issue.",
            "pods use the in-tree gitRepo volume to clone a repository to a subdirectory",
        ),
        (
            "Additionally, since the gitRepo",
            "into the Pod's container.",
            "perform the Git clone operation using an init container",
        ),
    ],
)
def test_a_sentence_or_two_quoted_in_a_longer_reply_is_caught(
    matcher: Matcher, first: str, last: str, wording: str
) -> None:
    sentences = between(GITREPO, first, last)
    message = f"{NEW_TEXT}\nOn Monday Sam wrote:\n{quoted(sentences, 50)}\n\n{UNRELATED_NOTE}"

    match = only(matcher.match(message))

    # A small share of the reply and short of STRONG_MATCHED: the quoted passage alone tells.
    assert match.score < MIN_SCORE
    assert QUOTED_RUN <= match.matched_fingerprints < STRONG_MATCHED
    joined = " ".join(match.excerpts)
    assert wording in joined
    assert "rollout order" not in joined and "admission webhook" not in joined


def test_digest_of_other_advisories_sharing_the_template_is_not_caught(matcher: Matcher) -> None:
    others = [advisory(p.name) for p in sorted(DATA.glob("k8s-CVE-*.txt")) if CVE not in p.name]
    digest = "\n\n".join(others)

    loose = only(matcher.match(digest, min_score=0.0))

    # Enough shared fingerprints, but from template lines in short passages, none a quotation.
    assert loose.matched_fingerprints >= MIN_MATCHED
    assert "find evidence that this vulnerability has been exploited" in " ".join(loose.excerpts)
    assert matcher.match(digest) == []


def test_bare_excerpt_scores_nearly_one(matcher: Matcher) -> None:
    match = only(matcher.match(quoted(EXCERPT, 72)))

    assert match.score >= 0.8
    assert match.identifiers == ()  # the excerpt names no advisory: the text alone gives it away


def test_fragment_of_the_attached_patch_is_caught(matcher: Matcher) -> None:
    patch = (DATA / PATCH).read_text()
    fragment = between(patch, "@@ -230,11", "'git reset --hard': %s: %v\", output, err)")
    hunk = "\n".join("> " + line for line in fragment.splitlines())
    message = f"Does this hunk also apply to 1.28?\n\n{hunk}\n\nI get a conflict there.\n"

    match = only(matcher.match(message))

    assert match.sources == (f"attachment:{PATCH}",)
    assert match.matched_fingerprints >= MIN_MATCHED
    assert '[]string{"checkout", b.revision}' in match.excerpts[0]


def test_mention_of_the_cve_alone_is_an_identifier_hit(matcher: Matcher) -> None:
    match = only(matcher.match("Do we know anything about CVE-2024-10220 yet? Thx"))

    assert match.identifiers == (CVE,)
    assert (match.score, match.matched_fingerprints, match.excerpts) == (0.0, 0, ())


def test_advisory_id_and_subjects_are_identifier_hits(matcher: Matcher) -> None:
    by_id = only(matcher.match("re adv-2026-0042: is the lift still on Friday?"))
    by_subject = only(matcher.match(f"Subject: Fwd: {SUBJECT}\n\nseen this?"))
    by_reply = only(matcher.match("Subject: FW: gitRepo hooks: fixed images for distributors"))
    partial = matcher.match("Subject: fixed images for our distributors\n\nnew builds are out")

    assert by_id.identifiers == (EMBARGOED,)
    assert by_subject.identifiers == (CVE, f"subject: {SUBJECT.removeprefix('[kubernetes] ')}")
    assert by_reply.identifiers == ("subject: gitRepo hooks: fixed images for distributors",)
    assert partial == []


@pytest.mark.parametrize(
    "name",
    [
        "k8s-CVE-2023-2878-oss-security-email.txt",  # same sender, same template
        "k8s-CVE-2020-8554-issue-97076.txt",
        "k8s-CVE-2023-2431-issue-118690.txt",
    ],
)
def test_another_public_kubernetes_advisory_is_not_caught(matcher: Matcher, name: str) -> None:
    assert matcher.match(advisory(name)) == []


def test_note_on_the_same_topic_sharing_vocabulary_is_not_caught(matcher: Matcher) -> None:
    assert matcher.match(UNRELATED_NOTE) == []
    assert matcher.match(f"{UNRELATED_NOTE}\n{NEW_TEXT}", min_score=0.0) == []


def test_removed_advisory_no_longer_matches(matcher: Matcher) -> None:
    message = f"{NEW_TEXT}\n{quoted(EXCERPT, 58)}\n{CVE}"
    assert matcher.match(message)

    matcher.remove(EMBARGOED.lower())

    assert len(matcher) == 0
    assert EMBARGOED not in matcher
    assert matcher.match(message) == []
    other = Matcher()
    other.add("ADV-1", advisory("k8s-CVE-2023-2431-issue-118690.txt"))
    other.add("ADV-2", GITREPO, identifiers=[CVE])
    other.remove("ADV-2")
    assert other.match(message) == []
    assert [m.advisory_id for m in other.match(advisory("k8s-CVE-2023-2431-issue-118690.txt"))] == [
        "ADV-1"
    ]


def test_removing_one_of_two_advisories_that_share_text_keeps_the_other() -> None:
    matcher = Matcher()
    matcher.add("ADV-1", f"{EXCERPT}\n\n{advisory('k8s-CVE-2023-2431-issue-118690.txt')}")
    matcher.add("ADV-2", GITREPO)
    message = f"{NEW_TEXT}\n{quoted(EXCERPT, 60)}\n"
    assert sorted(m.advisory_id for m in matcher.match(message)) == ["ADV-1", "ADV-2"]

    matcher.remove("ADV-2")

    assert only(matcher.match(message), "ADV-1").matched_fingerprints >= MIN_MATCHED
    matcher.remove("ADV-1")
    assert matcher.match(message) == []


TEMPLATE = """\
If you find evidence that this vulnerability has been exploited, please contact
security@kubernetes.io and include the audit logs, the affected cluster versions, the admission
configuration, and the time window in which the suspicious requests were observed. The Security
Response Committee will acknowledge your report within three working days and keep you informed
of the progress towards a fix and the public announcement. This advisory also mentions
CVE-2020-8554, the man in the middle attack through LoadBalancer or ExternalIPs.
"""


def test_public_text_does_not_count_as_evidence() -> None:
    matcher = Matcher()
    matcher.add("ADV-9", f"{EXCERPT}\n\n{TEMPLATE}")
    assert only(matcher.match(TEMPLATE), "ADV-9").identifiers == ("CVE-2020-8554",)

    matcher.ignore(TEMPLATE)

    assert matcher.match(TEMPLATE, min_score=0.0) == []
    assert only(matcher.match(quoted(EXCERPT, 60)), "ADV-9").score >= 0.8
    assert only(matcher.match("Is ADV-9 about CVE-2020-8554?"), "ADV-9").identifiers == ("ADV-9",)


def synthetic_advisory(rng: random.Random, words: list[str]) -> str:
    sentences = []
    for _ in range(120):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))
        sentences.append(sentence.capitalize() + ".")
    return textwrap.fill(" ".join(sentences), 72)


def test_many_advisories_indexed_at_once_return_the_right_one() -> None:
    names = sorted(p.name for p in DATA.glob("k8s-CVE-*.txt"))
    texts = {name: advisory(name) for name in names}
    words = sorted({w for text in texts.values() for w in re.findall(r"[A-Za-z][\w.-]+", text)})
    rng = random.Random(4)
    matcher = Matcher()
    for n in range(300):
        matcher.add(f"SYN-{n}", synthetic_advisory(rng, words))
    for name, text in texts.items():
        matcher.add(name, text)
    assert len(matcher) == 305

    for name, text in texts.items():
        sentences = re.split(r"(?<=[.?!])\s+", " ".join(text.split()))
        five = " ".join(sentences[len(sentences) // 3 :][:5])
        matches = matcher.match(f"{NEW_TEXT}\n{quoted(five, 50)}")
        assert matches[0].advisory_id == name, (five, matches)
        assert matches[0].score >= MIN_SCORE
        assert matches[0].sources == ("body",)


# -- the evasion corpus: quotes in every dress, read as the relay reads a message

CORPUS = excerpts(random.Random(2026), 5)  # one excerpt of 2-5 sentences per advisory
CASES = [(name,) for name in TRANSFORMS] + list(PAIRS)
# A letter-spaced quote re-wrapped by a mail client loses the word gap at each line end it
# breaks at (textwrap drops it), and the normaliser joins those two words: this excerpt is
# 37 words, 6 fingerprints when plain, and two such joins leave it below MIN_MATCHED.
KNOWN_MISSES = {("letter-spacing", "re-wrap"): {"k8s-CVE-2020-8554-issue-97076.txt"}}


@pytest.fixture(scope="module")
def every_advisory() -> Matcher:
    matcher = Matcher()
    for name, text in advisory_texts().items():
        matcher.add(name, text)
    matcher.add_attachment(
        "k8s-CVE-2024-10220-oss-security-email.txt", PATCH, (DATA / PATCH).read_text()
    )
    return matcher


@pytest.mark.parametrize("case", CASES, ids="+".join)
def test_a_quote_in_any_dress_is_caught_and_unrelated_text_in_it_is_not(
    every_advisory: Matcher, case: tuple[str, ...]
) -> None:
    missed = set()
    for name, excerpt in CORPUS:
        found = read_content(evasive_payload(excerpt, case))
        assert found.unreadable == ()
        if name not in [m.advisory_id for m in every_advisory.match(found.text)]:
            missed.add(name)
    unrelated = read_content(evasive_payload(f"{NEW_TEXT}\n{UNRELATED_NOTE}", case))

    assert missed == KNOWN_MISSES.get(case, set())
    assert every_advisory.match(unrelated.text) == []


def test_a_homoglyph_quote_is_reported_in_its_own_wording(every_advisory: Matcher) -> None:
    name, excerpt = CORPUS[-1]
    dressed = evasive_text(excerpt, ["homoglyphs", "zero-width"])

    match = only(every_advisory.match(f"{NEW_TEXT}\n{dressed}"), name)

    assert match.score >= MIN_SCORE
    for passage in match.excerpts:
        assert passage.removesuffix("…") in dressed.replace("\n", " ")  # the sender's own
        assert passage != passage.encode("ascii", "ignore").decode()  # characters
