"""Who may post, and where a member's post goes: the `[posting]` table of a list's policy.

A member's post (a report on a patch, a question) goes to the whole list, to the
authorised senders only, or waits for a moderator; the Kubernetes list moderates
every post. With no policy file, member posts go to the whole list.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from relay.core.config import Settings
from relay.core.errors import RelayError


class MemberPosts(StrEnum):
    LIST = "list"  # every active member
    SRC = "src"  # the authorised senders (and the security contact) only
    MODERATE = "moderate"  # held until a moderator releases it


class _Posting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    member_posts: MemberPosts = MemberPosts.LIST


@dataclass(frozen=True)
class PostingPolicy:
    member_posts: MemberPosts = MemberPosts.LIST


DEFAULT = PostingPolicy()


def posting_for(settings: Settings) -> PostingPolicy:
    """The `[posting]` rules of the configured policy file, or the built-in default."""
    path: Path | None = settings.embargo.policy
    if path is None:
        return DEFAULT
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RelayError(f"cannot read policy file {path}: {exc}") from None
    try:
        posting = _Posting.model_validate(raw.get("posting", {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"posting.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise RelayError(f"{path}: invalid policy: {problems}") from None
    return PostingPolicy(posting.member_posts)
