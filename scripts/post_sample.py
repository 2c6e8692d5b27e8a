#!/usr/bin/env python3
"""Sign the sample advisory as an SRC sender would, and post it to the relay over SMTP.

Standard library and the gpg binary only. Two forms, as mail clients send them:
  --form pgpmime    multipart/signed (RFC 3156), Subject protected inside (RFC 9788 hp="clear")
  --form clearsign  a text/plain body holding one cleartext signature (inline PGP)

Example:
  scripts/post_sample.py --gnupghome /tmp/demo/src --from src@example.net
"""

from __future__ import annotations

import argparse
import email.utils
import secrets
import smtplib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample-advisory.txt"
# OpenPGP hash algorithm ids (RFC 4880 section 9.4) as RFC 3156 micalg names.
MICALG = {"2": "pgp-sha1", "8": "pgp-sha256", "9": "pgp-sha384", "10": "pgp-sha512"}


def read_advisory(path: Path) -> tuple[str, str]:
    """Subject and body: leading '#' lines are comments, then 'Subject: ...', a blank line, text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    if not lines or not lines[0].startswith("Subject: "):
        raise SystemExit(f"{path}: expected a 'Subject: ' line after the comments")
    subject = lines.pop(0).removeprefix("Subject: ").strip()
    return subject, "\n".join(lines).strip("\n") + "\n"


def next_lift(now: datetime | None = None) -> datetime:
    """The Kubernetes habit: a Tuesday at 16:00 UTC, at least 8 days ahead (7 days of notice)."""
    now = now or datetime.now(UTC)
    day = (now + timedelta(days=8)).date()
    while day.weekday() != 1:  # Tuesday
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, 16, 0, tzinfo=UTC)


class _LiftTime(dict):
    """Fills {lift} / {lift_text} in the sample; any other braces stay as they are."""

    def __init__(self, lift: datetime) -> None:
        super().__init__(
            lift=lift.strftime("%Y-%m-%d %H:%M UTC"),
            lift_text=lift.strftime("%A, %Y-%m-%d at %H:%M UTC"),
        )

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def gpg(home: str, args: list[str], data: bytes) -> tuple[bytes, list[list[str]]]:
    """Run gpg in `home`; return its output and status lines, or exit with its error."""
    command = ["gpg", "--homedir", home, "--batch", "--no-tty", "--status-fd", "2", *args]
    done = subprocess.run(command, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gpg failed: {done.stderr.decode(errors='replace').strip()}")
    status = [
        line[9:].split(" ")
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.startswith("[GNUPG:] ")
    ]
    return done.stdout, status


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def headers(sender: str, recipient: str, subject: str) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    return message


def clearsigned(home: str, key: str, sender: str, recipient: str, subject: str, body: str) -> bytes:
    signed, _ = gpg(home, ["--clearsign", "--local-user", key], body.encode())
    message = headers(sender, recipient, subject)
    message.set_content(signed.decode("ascii"), cte="7bit")
    return message.as_bytes()


def pgp_mime(home: str, key: str, sender: str, recipient: str, subject: str, body: str) -> bytes:
    part = MIMEPart(policy=SMTP)
    part.set_content(body, cte="quoted-printable")
    part.set_param("hp", "clear")  # the Subject below is covered by the signature
    part["Subject"] = subject
    # The signed bytes are exactly what goes between the boundaries, CRLF line ends.
    signed = part.as_bytes()
    signature, status = gpg(home, ["--detach-sign", "--armor", "--local-user", key], signed)
    created = next((s for s in status if s[0] == "SIG_CREATED"), None)
    if created is None or created[3] not in MICALG:
        raise SystemExit(f"gpg did not report a usable signature: {status}")
    boundary = f"=-{secrets.token_hex(12)}"
    message = headers(sender, recipient, subject)
    message["MIME-Version"] = "1.0"
    message["Content-Type"] = (
        f"multipart/signed; micalg={MICALG[created[3]]}; "
        f'protocol="application/pgp-signature"; boundary="{boundary}"'
    )
    sig_headers = (
        b'Content-Type: application/pgp-signature; name="signature.asc"\r\n'
        b'Content-Disposition: attachment; filename="signature.asc"\r\n\r\n'
    )
    delimiter = f"--{boundary}".encode()
    return b"".join(
        [
            # Header fields only: the generator would write the multipart body itself.
            *(SMTP.fold_binary(name, value) for name, value in message.items()),
            b"\r\n",
            b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n",
            delimiter + b"\r\n" + signed + b"\r\n",
            delimiter + b"\r\n" + sig_headers + crlf(signature),
            delimiter + b"--\r\n",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gnupghome", required=True, help="GnuPG home with the sender's key")
    parser.add_argument("--from", dest="sender", required=True, help="sender address")
    parser.add_argument("--key", help="signing key (fingerprint or address; default: --from)")
    parser.add_argument("--to", default="distributors-announce@example.org", help="list address")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--form", choices=["pgpmime", "clearsign"], default="pgpmime")
    parser.add_argument("--file", type=Path, default=SAMPLE, help="advisory text to post")
    args = parser.parse_args()

    subject, body = read_advisory(args.file)
    body = body.format_map(_LiftTime(next_lift()))
    build = pgp_mime if args.form == "pgpmime" else clearsigned
    raw = build(args.gnupghome, args.key or args.sender, args.sender, args.to, subject, body)
    with smtplib.SMTP(args.host, args.port, timeout=30) as smtp:
        smtp.ehlo()
        # One command at a time, to show the relay's own reply to each step.
        steps = [
            ("MAIL FROM", lambda: smtp.mail(args.sender)),
            ("RCPT TO", lambda: smtp.rcpt(args.to)),
            ("DATA", lambda: smtp.data(raw)),
        ]
        for step, send in steps:
            code, reply = send()
            if code >= 400:
                print(f"{step} refused: {code} {reply.decode(errors='replace')}", file=sys.stderr)
                return 1
        print(f"{code} {reply.decode(errors='replace')} ({args.form}, {len(raw)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
