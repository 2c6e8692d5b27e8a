"""Checking the audit trail's hash chain (relay/store/audit_chain.py): `relay audit verify`,
the console's audit page and the API's /audit/verify."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.database import Database
from relay.store import audit_chain


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    rows: int  # rows read up to the first break, or all of them
    first_bad: int | None  # the audit row id where the chain first fails, if a row
    reason: str | None
    head: str | None  # hex SHA-256 of the newest row: write it down to anchor the chain

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.rows} row(s)"
        where = "at the end" if self.first_bad is None else f"at audit row {self.first_bad}"
        return f"audit chain broken {where}: {self.reason}"


def verify_chain(db: Database) -> ChainCheck:
    with db.transaction() as session:
        walked = audit_chain.walk(session)
    found = walked.first_break
    if found is None:
        return ChainCheck(True, walked.rows, None, None, walked.head)
    return ChainCheck(False, walked.rows, found.row_id, found.reason, walked.head)
