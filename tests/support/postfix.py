"""A private Postfix instance in a test's folder: the front MTA in front of the relay.

    with PrivatePostfix(tmp_path / "postfix", port, relay.port, sink.port, "example.org",
                        copies_port=copies) as postfix:
        ...  # post to 127.0.0.1:port as the internet would; the relay sends to copies

It is laid out as docs/postfix.md recommends for production, on loopback and free ports:

- `port` is the MX listener. It takes mail for the list address and its `+` extensions
  (the copies' VERP bounce addresses) and relays for nobody, not even loopback: anything
  else is refused during the dialogue (`554 5.7.1` Relay access denied, or `550 5.1.1` for
  an unknown address in the list's domain), so Postfix never accepts what it would bounce.
  STARTTLS is offered (`smtpd_tls_security_level = may`) when `certificate` is given.
- `relay_port` is the relay's own SMTP port: `transport_maps` sends the list address to it
  through the `embargo` transport (plain SMTP on loopback).
- `copies_port` is where the relay hands in its copies: loopback clients only
  (`permit_mynetworks`), no TLS offered, so the relay's transport takes plaintext there as
  it does only for a loopback smarthost. Without it the copies come in on `port`, which then
  relays for loopback too (Postfix's default `permit_mynetworks, reject_unauth_destination`).
- `relayhost_port` takes the copies out: `relayhost = [127.0.0.1]:PORT`, over verified TLS
  (`secure`, against `relayhost_ca` and the name `relayhost_name`) when a CA is given.

It is Debian's Postfix binaries with their own `config_directory` (main.cf and master.cf
written here), `queue_directory` and `data_directory` in the folder, as `postmulti` runs
an instance; nothing of the system's /etc/postfix is read or started. No daemon is
chrooted, nothing goes to syslog (postlogd writes `maillog`), and the queue retries within
seconds, so a fault shows in the log rather than in a long wait. Leaving the block stops
the instance (`postfix stop`, then `abort`, then SIGKILL by pid) and waits until none of
its processes is left; a start that fails raises with the log and `postfix check`.
Postfix needs root (it starts as root and drops to the `postfix` user).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")


def available() -> str | None:
    """Why a private Postfix cannot run here; None when it can."""
    if not POSTFIX.exists():
        return f"{POSTFIX} is not installed (make test-packages installs Postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (it starts as root, then drops to postfix)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostfixError(RuntimeError):
    pass


class PrivatePostfix:
    """One Postfix instance of its own in `folder`, running inside the `with` block."""

    def __init__(
        self,
        folder: Path,
        port: int,
        relay_port: int,
        relayhost_port: int,
        domain: str,
        *,
        list_local: str = "distributors",
        copies_port: int | None = None,
        certificate: tuple[Path, Path] | None = None,
        relayhost_ca: Path | None = None,
        relayhost_name: str | None = None,
        message_size_limit: int = 10 * 1024 * 1024,
    ) -> None:
        self.folder = folder.resolve()
        self.port = port
        self.relay_port = relay_port
        self.relayhost_port = relayhost_port
        self.domain = domain
        self.list_address = f"{list_local}@{domain}"
        self.copies_port = copies_port
        self.certificate = certificate  # (chain, key) PEM files for STARTTLS on `port`
        self.relayhost_ca = relayhost_ca
        self.relayhost_name = relayhost_name
        self.message_size_limit = message_size_limit
        # Its own name, so a Received header shows that this instance handled a message.
        self.hostname = f"mx-{secrets.token_hex(4)}.postfix.test"
        self.config_dir = self.folder / "etc"
        self.queue_dir = self.folder / "queue"
        self.data_dir = self.folder / "data"
        self.maillog = self.folder / "maillog"
        self._started = False

    # The configuration

    def main_cf(self) -> str:
        tls_in = (
            f"smtpd_tls_security_level = may\n"
            f"smtpd_tls_cert_file = {self.certificate[0]}\n"
            f"smtpd_tls_key_file = {self.certificate[1]}\n"
            "smtpd_tls_loglevel = 1\n"
            if self.certificate
            else "smtpd_tls_security_level = none\n"
        )
        tls_out = (
            f"smtp_tls_security_level = secure\n"
            f"smtp_tls_CAfile = {self.relayhost_ca}\n"
            f"smtp_tls_policy_maps = texthash:{self.config_dir / 'tls_policy'}\n"
            "smtp_tls_loglevel = 1\n"
            if self.relayhost_ca
            else "smtp_tls_security_level = may\n"
        )
        return f"""\
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = {self.hostname}
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# Nothing is delivered on this host: the list's domain is relayed, to the relay only.
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery on this host
alias_maps =
alias_database =
relay_domains = {self.domain}
relay_recipient_maps = texthash:{self.config_dir / "relay_recipients"}
transport_maps = texthash:{self.config_dir / "transport"}
# list+bounce-<token>@domain matches the list address's entries in both tables.
recipient_delimiter = +
relayhost = [127.0.0.1]:{self.relayhost_port}

smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = reject_non_fqdn_recipient, reject_unlisted_recipient
message_size_limit = {self.message_size_limit}

# Hand every message on as it came: no header address rewriting (not even for loopback
# clients), no 8BITMIME-to-7bit conversion, no SMTPUTF8 the relay does not speak.
local_header_rewrite_clients =
disable_mime_output_conversion = yes
smtputf8_enable = no

{tls_in}{tls_out}
# Every next hop here is an IP literal: no DNS.
smtp_dns_support_level = disabled
smtpd_peername_lookup = no

maillog_file = {self.maillog}
maillog_file_prefixes = {self.folder}
biff = no
# A failure shows within seconds, not after the default hour.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""

    def master_cf(self) -> str:
        if self.copies_port is None:
            listeners = f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
        else:
            listeners = (
                f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
                "  -o syslog_name=postfix/mx\n"
                "  -o smtpd_relay_restrictions=reject_unauth_destination\n"
                f"127.0.0.1:{self.copies_port} inet n - n - - smtpd\n"
                "  -o syslog_name=postfix/copies\n"
                "  -o smtpd_tls_security_level=none\n"
                "  -o smtpd_relay_restrictions=permit_mynetworks,reject\n"
            )
        return (
            listeners
            + """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
embargo   unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/embargo
  -o smtp_tls_security_level=none
"""
        )

    def _write(self) -> None:
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Postfix's daemons run as `postfix` once started; the folders above theirs must let
        # that user through (pytest's base folder is root's, mode 0700).
        for parent in (self.folder, *self.folder.parents):
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        (self.config_dir / "main.cf").write_text(self.main_cf(), encoding="utf-8")
        (self.config_dir / "master.cf").write_text(self.master_cf(), encoding="utf-8")
        (self.config_dir / "relay_recipients").write_text(
            f"{self.list_address} OK\n", encoding="utf-8"
        )
        (self.config_dir / "transport").write_text(
            f"{self.list_address} embargo:[127.0.0.1]:{self.relay_port}\n", encoding="utf-8"
        )
        if self.relayhost_ca:
            name = self.relayhost_name or "127.0.0.1"
            (self.config_dir / "tls_policy").write_text(
                f"[127.0.0.1]:{self.relayhost_port} secure match={name}\n", encoding="utf-8"
            )

    # Running it

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`postfix -c <this instance> ARGS`, its output kept."""
        done = subprocess.run(
            [str(POSTFIX), "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self._environment(),
        )
        if check and done.returncode != 0:
            raise PostfixError(self._report(f"postfix {' '.join(args)}", done))
        return done

    def postconf(self, *args: str) -> str:
        done = subprocess.run(
            [str(POSTCONF), "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self._environment(),
            check=True,
        )
        return done.stdout

    def _environment(self) -> dict[str, str]:
        # MAIL_CONFIG would point every Postfix command elsewhere; -c is the one source.
        return {k: v for k, v in os.environ.items() if k not in ("MAIL_CONFIG", "MAIL_DEBUG")}

    def start(self) -> PrivatePostfix:
        self._write()
        # Creates the queue's subfolders with the owners and modes Postfix insists on.
        self.postfix("set-permissions")
        self.postfix("check")
        self._started = True
        try:
            self.postfix("start")
            for port in (self.port, self.copies_port):
                if port is not None:
                    self._wait_listening(port)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            if time.monotonic() > deadline:
                raise PostfixError(self._report(f"nothing listens on port {port}", None))
            time.sleep(0.05)

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> list[int]:
        """This instance's running processes: every Postfix daemon works in its queue
        directory, and no other process on the machine has this one."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == self.queue_dir:
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """An orderly stop, then harder ones, until none of its processes is left."""
        if not self._started:
            return
        self._started = False
        pid = self.master_pid()
        self.postfix("stop", check=False)
        if self._gone(pid, 20):
            return
        self.postfix("abort", check=False)
        if self._gone(pid, 10):
            return
        for leftover in {*self.processes(), *([pid] if pid else [])}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
        if not self._gone(pid, 10):
            raise PostfixError(f"Postfix processes left running: {self.processes()}")

    def _gone(self, pid: int | None, timeout: float) -> bool:
        """Wait until the master `pid` and every daemon of this instance have exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = pid is not None and Path(f"/proc/{pid}").exists()
            if not alive and not self.processes():
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _report(self, what: str, done: subprocess.CompletedProcess[str] | None) -> str:
        parts = [what]
        if done is not None:
            parts += [f"exit {done.returncode}", done.stdout, done.stderr]
        check = subprocess.run(
            [str(POSTFIX), "-c", str(self.config_dir), "check"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self._environment(),
        )
        parts += ["postfix check:", check.stdout + check.stderr, "maillog:", self.log()]
        return "\n".join(part for part in parts if part)

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
