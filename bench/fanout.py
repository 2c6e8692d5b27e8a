"""Fan-out benchmark: one signed 20 KB advisory to 10, 50 and 200 members.

Run: `make bench` (or `.venv/bin/python -m bench.fanout`).

For each list size, the relay runs as a real `relay serve` process and a
lean SMTP sink (`bench/sink.py`, standing in for the next-hop MTA) as
another; the clock starts when the client reads the relay's `250` and stops
when the sink accepts the last copy. Beside it, in the same run
and on the same keys, the floor: the bare cost of producing the same signed and
encrypted copies with the same crypto backend (`relay.core.gpg.GnuPG`) and the
same number of workers, with nothing else around it. The ratio relay/floor shows
what the relay's own work (database, MIME, SMTP) adds to the cryptography.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiosmtplib

from relay.core.gpg import GnuPG
from tests.support.keys import KeyFactory, Keyring
from tests.support.mail import pgp_mime_signed, text_entity
from tests.support.relayhome import LIST, RelayHome

SIZES = (10, 50, 200)
SCHLEUDER_50 = 8.61  # seconds, Schleuder 4.0.3, one signed+encrypted post to 50 subscribers
WORKERS = 2


def advisory_text(size: int = 20 * 1024) -> str:
    paragraph = (
        "A security issue was discovered in kube-apiserver that could allow an attacker\n"
        "with the ability to create Services to intercept traffic of other tenants.\n"
        "Affected versions: v1.30.0 - v1.30.4, v1.31.0 - v1.31.2. Mitigation: restrict\n"
        "the create verb on Services of type ExternalName to trusted principals.\n\n"
    )
    return (paragraph * (size // len(paragraph) + 1))[:size]


def start_sink(out: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", "--port", "0", "--out", str(out)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    return proc, int(line.rsplit(":", 1)[1])


def start_relay(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--config", str(config), "serve"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "listening" in line and "port=" in line:
                return proc, int(line.rsplit("port=", 1)[1].split()[0])
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"relay did not start: {log.read_text()}")


async def post(port: int, data: bytes) -> int:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await smtp.connect()
    await smtp.sendmail("src@example.org", [LIST], data)
    acknowledged = time.time_ns()
    smtp.close()
    return acknowledged


def wait_for(out: Path, count: int, timeout: float = 300) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(out.glob("*.eml"))
        if len(found) >= count:
            return found
        time.sleep(0.01)
    raise RuntimeError(f"only {len(list(out.glob('*.eml')))} of {count} copies arrived")


def run_relay(root: Path, factory: KeyFactory, members: int, data_for) -> tuple[float, Path, bytes]:
    """One fan-out through the relay; returns seconds from 250 to the last copy."""
    out = root / "sink"
    out.mkdir()
    sink, sink_port = start_sink(out)
    try:
        home = RelayHome(root, factory, smarthost=f"127.0.0.1:{sink_port}")
        src = factory.make("src", "src@example.org")
        home.add_sender(src)
        for n in range(members):
            home.add_member(factory.make(f"m{n}", f"security@m{n}.example"))
        data = data_for(home, src)
        relay, port = start_relay(home.config_path, root / "relay.log")
        try:
            acknowledged = asyncio.run(post(port, data))
            files = wait_for(out, members)
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
        last = max(int(f.name.split("-", 1)[0]) for f in files)
        member0 = factory.make("m0", "security@m0.example")
        copy = next(out.glob(f"*-{member0.address}.eml")).read_bytes()
        inner, _ = Keyring(root / "m0-client", member0).decrypt(copy)
        return (last - acknowledged) / 1e9, home.settings.gnupg.home, inner
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(10)


def run_floor(gnupg_home: Path, factory: KeyFactory, members: int, inner: bytes) -> float:
    """The same copies, bare: one signed and encrypted OpenPGP message per member.

    Same backend, same keys, same number of crypto workers as the relay; `inner`
    is the protected root a member decrypts from the relay's copy.
    """
    crypto = GnuPG(gnupg_home)
    list_fpr = next(k.fingerprint for k in crypto.list_keys() if k.secret)
    recipients = [
        factory.make(f"m{n}", f"security@m{n}.example").fingerprint for n in range(members)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        copies = list(pool.map(lambda fpr: crypto.sign_encrypt(inner, [fpr], list_fpr), recipients))
    elapsed = time.perf_counter() - started
    assert len(copies) == members
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median is shown")
    args = parser.parse_args()
    body = advisory_text()

    def data_for(home: RelayHome, src) -> bytes:  # type: ignore[no-untyped-def]
        return pgp_mime_signed(
            home.client(src),
            src.fingerprint,
            text_entity(body),
            subject="[EMBARGOED] CVE-2026-0000: benchmark",
            sender=src.address,
            to=LIST,
        )

    with tempfile.TemporaryDirectory(prefix="relay-bench-") as scratch:
        factory = KeyFactory(Path(scratch) / "keys")
        print(f"generating {max(args.sizes) + 1} keys ...", file=sys.stderr)
        factory.make("src", "src@example.org")
        for n in range(max(args.sizes)):
            factory.make(f"m{n}", f"security@m{n}.example")
        rows = []
        for members in args.sizes:
            relay_times, floor_times = [], []
            for attempt in range(args.repeat):
                root = Path(scratch) / f"n{members}-{attempt}"
                root.mkdir()
                seconds, gnupg_home, inner = run_relay(root, factory, members, data_for)
                relay_times.append(seconds)
                floor_times.append(run_floor(gnupg_home, factory, members, inner))
            rows.append((members, statistics.median(relay_times), statistics.median(floor_times)))

    print(
        f"\nOne {len(body) // 1024} KB signed advisory, {WORKERS} workers, "
        f"median of {args.repeat} runs (gpg {GnuPG.version_text()})\n"
    )
    header = ("members", "relay s", "relay ms/member", "floor s", "floor ms/member", "relay/floor")
    print("  ".join(f"{h:>15}" for h in header))
    for members, relay_s, floor_s in rows:
        print(
            "  ".join(
                f"{v:>15}"
                for v in (
                    members,
                    f"{relay_s:.3f}",
                    f"{relay_s / members * 1000:.1f}",
                    f"{floor_s:.3f}",
                    f"{floor_s / members * 1000:.1f}",
                    f"{relay_s / floor_s:.2f}",
                )
            )
        )
    for members, relay_s, _ in rows:
        if members == 50:
            print(
                f"\nAt 50 members: {SCHLEUDER_50 / relay_s:.0f}x faster than Schleuder's "
                f"{SCHLEUDER_50} s measured on this kind of machine (goal: at least 20x)."
            )
    print("Goal: relay/floor under 1.3 at 200 members.")


if __name__ == "__main__":
    main()
