"""Flood benchmark: signed posts beside 16 clients sending unsigned many-part junk.

Run: `make bench` (or `.venv/bin/python -m bench.flood`; `--posts N` for the length).

A real `relay serve` process with throwaway keys (one SRC sender, two members) delivers
to a lean sink process (bench/sink.py), as in bench/fanout.py. A flood process runs 16
SMTP clients on 127.0.0.1 that send unsigned posts at full speed, each waiting only for
the answer to its last: half send 2.7 MB of empty parts (`--b` CRLF CRLF, 385,000 of
them), half 9 MB of one-line parts, both without a Content-Type in any part. This
process meanwhile posts one genuinely signed advisory (fresh signature, unique text)
every second from the authorised sender and times each from the TCP connect to the
`250`. Printed: p50 and p99 of that time, junk refusals per second, and the relay
process's resident memory before the flood and at its peak (VmHWM). Bounded: `--posts`
signed posts (40 by default), then everything stops. The flood sends under the relay's
per-address cap by raising it to 32 for this run: all clients share 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiosmtplib

from bench.fanout import start_relay, start_sink
from relay.core.gpg import GnuPG
from tests.support.keys import KeyFactory
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome

CLIENTS = 16
GOAL_P99 = 1.0  # seconds
GOAL_RSS = 300  # MB
_MULTIPART = b'From: x@example.net\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'


def empty_parts(size: int) -> bytes:
    """`size` bytes of typeless empty parts: 7 bytes each."""
    head = b"Subject: parts\r\n" + _MULTIPART
    return head + b"--b\r\n\r\n" * ((size - len(head)) // 7) + b"--b--\r\n"


def one_line_parts(size: int) -> bytes:
    """`size` bytes of typeless parts of one short line each."""
    head = b"Subject: lines\r\n" + _MULTIPART
    part = b"--b\r\n\r\nsome words of a part\r\n"
    return head + part * ((size - len(head)) // len(part)) + b"--b--\r\n"


# The flood, in a process of its own so that it does not share this one's event loop


async def _reply(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    while line[3:4] == b"-":
        line = await reader.readline()
    return line


async def _junk_client(port: int, junk: bytes, until: float, counts: Counter[str]) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            if not (await _reply(reader)).startswith(b"220"):
                counts["not greeted"] += 1
                continue
            writer.write(b"EHLO flood.example\r\n")
            await _reply(reader)
            while time.monotonic() < until:
                for command in (b"MAIL FROM:<x@example.net>\r\n", f"RCPT TO:<{LIST}>\r\n".encode()):
                    writer.write(command)
                    await _reply(reader)
                writer.write(b"DATA\r\n")
                if not (await _reply(reader)).startswith(b"354"):
                    counts["no 354"] += 1
                    break
                writer.write(junk)
                writer.write(b".\r\n")
                answer = await _reply(reader)
                code = answer[:3].decode("ascii", "replace") or "closed"
                counts[code] += 1
                if code in ("421", "closed"):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            counts["dropped"] += 1
        finally:
            writer.close()


def run_flood(port: int, seconds: float, results: multiprocessing.Queue) -> None:
    kinds = [empty_parts(2_700_000), one_line_parts(9_000_000)]

    async def flood() -> Counter[str]:
        counts: Counter[str] = Counter()
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(_junk_client(port, kinds[n % 2], until, counts) for n in range(CLIENTS))
        )
        return counts

    results.put(dict(asyncio.run(flood())))


# The signed posts


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


async def timed_post(port: int, data: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=300)
    try:
        await smtp.connect()
        await smtp.sendmail("src@example.org", [LIST], data)
        code = 250
    except aiosmtplib.SMTPResponseException as exc:
        code = exc.code
    finally:
        smtp.close()
    return time.perf_counter() - started, code


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=40, help="signed posts, one a second")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="relay-flood-") as scratch:
        root = Path(scratch)
        factory = KeyFactory(root / "keys")
        out = root / "sink"
        out.mkdir()
        sink, sink_port = start_sink(out)
        relay = None
        try:
            (root / "relay").mkdir()
            home = RelayHome(root / "relay", factory, smarthost=f"127.0.0.1:{sink_port}")
            config = home.config_path.read_text().replace(
                "max_message_size = 1048576",
                "max_message_size = 10485760\nmax_connections_per_ip = 32",
            )
            home.config_path.write_text(config)
            src = factory.make("src", "src@example.org")
            home.add_sender(src)
            for n in range(2):
                home.add_member(factory.make(f"m{n}", f"security@m{n}.example"))
            client = home.client(src)
            print(f"signing {args.posts} posts ...", file=sys.stderr)
            posts = [
                pgp_mime_signed(
                    client,
                    src.fingerprint,
                    text_entity(f"Advisory {n} of the flood benchmark.\n" * 200),
                    subject=f"[EMBARGOED] CVE-2026-{1000 + n}: flood benchmark",
                    sender=src.address,
                    to=LIST,
                )
                for n in range(args.posts)
            ]
            relay, port = start_relay(home.config_path, root / "relay.log")
            quiet = [asyncio.run(timed_post(port, posts[0]))[0]]  # one without the flood
            before = rss_mb(relay.pid, "VmRSS")

            results: multiprocessing.Queue = multiprocessing.Queue()
            seconds = args.posts + 3.0
            flood = multiprocessing.Process(target=run_flood, args=(port, seconds, results))
            flood.start()
            time.sleep(2.0)  # let the flood get going
            times, codes = [], Counter()
            began = time.monotonic()
            for n, data in enumerate(posts[1:], start=1):
                elapsed, code = asyncio.run(timed_post(port, data))
                times.append(elapsed)
                codes[code] += 1
                time.sleep(max(0.0, began + n - time.monotonic()))
            peak = rss_mb(relay.pid, "VmHWM")
            counts = results.get(timeout=seconds + 120)
            flood.join(30)
        finally:
            if relay is not None:
                relay.send_signal(signal.SIGTERM)
                relay.wait(30)
            sink.send_signal(signal.SIGTERM)
            sink.wait(10)
        log = (root / "relay.log").read_text(errors="replace").splitlines()
        errors = [line for line in log if " ERROR " in line or "Traceback" in line]

    refused = sum(v for k, v in counts.items() if k in ("550", "552", "554"))
    print(
        f"\n{CLIENTS} junk clients (2.7 MB empty parts / 9 MB one-line parts) for {seconds:.0f} s; "
        f"one signed post a second; {os.cpu_count()} cores, gpg {GnuPG.version_text()}\n"
    )
    rows = [
        ("signed posts answered 250", f"{codes[250]} of {len(times)}"),
        ("signed post, connect to 250, p50", f"{statistics.median(times):.3f} s"),
        ("signed post, connect to 250, p99", f"{percentile(times, 0.99):.3f} s"),
        ("signed post without the flood", f"{quiet[0]:.3f} s"),
        ("junk refused per second", f"{refused / seconds:.1f}"),
        ("junk answers", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))),
        ("relay RSS before the flood", f"{before:.0f} MB"),
        ("relay RSS peak (VmHWM)", f"{peak:.0f} MB"),
        (
            "errors in the relay's log",
            f"{len(errors)}" + (f" (first: {errors[0]})" if errors else ""),
        ),
    ]
    for label, value in rows:
        print(f"{label:>34}  {value}")
    met = percentile(times, 0.99) < GOAL_P99 and peak < GOAL_RSS and codes[250] == len(times)
    verdict = "met" if met else "MISSED"
    print(f"\nGoals: p99 under {GOAL_P99:.0f} s, peak under {GOAL_RSS} MB: {verdict}")


if __name__ == "__main__":
    main()
