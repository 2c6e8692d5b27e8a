"""A lean SMTP sink for the benchmark, standing in for the next-hop MTA.

It reads DATA in bulk (not line by line) and writes each message to
`OUT/<arrival ns>-<seq>-<recipient>.eml` (named `.part` until it is whole) after
answering `250`, so the benchmark measures the relay, not a slow test server. Run:
`python -m bench.sink --out DIR` (prints `listening on HOST:PORT`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from pathlib import Path

_sequence = itertools.count(1)


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: Path) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    recipients: list[str] = []
    try:
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-sink\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
            elif verb == b"MAIL":
                recipients = []
                writer.write(b"250 2.1.0 OK\r\n")
            elif verb == b"RCPT":
                recipients.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
                writer.write(b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                arrived = time.time_ns()
                writer.write(b"250 2.0.0 OK\r\n")
                name = f"{arrived:020d}-{next(_sequence):06d}-{recipients[0]}.eml"
                # Whole before it has its name: the benchmark reads what it counts.
                part = out / f"{name}.part"
                part.write_bytes(data[:-3].replace(b"\r\n..", b"\r\n."))
                part.rename(out / name)
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                break
            else:  # RSET, NOOP
                writer.write(b"250 2.0.0 OK\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _main(host: str, port: int, out: Path) -> None:
    server = await asyncio.start_server(
        lambda r, w: _session(r, w, out), host, port, limit=64 * 1024 * 1024
    )
    print(f"listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="Lean SMTP sink for the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(_main(args.host, args.port, args.out))


if __name__ == "__main__":
    main()
