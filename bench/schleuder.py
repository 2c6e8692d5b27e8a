"""Schleuder, the fan-out benchmark's peer, set up in a scratch folder.

Debian's `schleuder` package, run without touching the system's configuration:
SCHLEUDER_CONFIG and SCHLEUDER_LIST_DEFAULTS point at files written here (an SQLite
database, the lists' keyrings and logs inside the folder, delivery by SMTP to the
benchmark's sink). The list gets the relay's list key and the members' public keys, so
both sides sign and encrypt with the same keys. A post is one `schleuder work LIST <
message`, as an MTA pipes it; Schleuder signs, encrypts and sends each copy before it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from relay.core.gpg import stop_agent

SCHLEUDER = "/usr/bin/schleuder"
# The installed library: its Rakefile creates the database (`rake db:init`).
LIBRARY = Path("/usr/lib/ruby/vendor_ruby/schleuder")

# One list, made and filled through Schleuder's own classes (as schleuder-cli's API calls
# do): the keys are already in the list's keyring, so each subscription names its key.
_CREATE_LIST = """
require 'schleuder'
address, fingerprint, admin, admin_fpr = ARGV[0..3]
subscriptions = JSON.parse(File.read(ARGV[4]))
list, _ = Schleuder::ListBuilder.new({email: address, fingerprint: fingerprint}).run
raise "list not created: #{list.errors.full_messages.inspect}" unless list.persisted?
# Schleuder refuses to run a list without an admin: the sender, who gets no copy.
subscriptions.unshift([admin, admin_fpr, true, false])
subscriptions.each do |email, fpr, admin_flag = false, delivery = true|
  sub, _ = list.subscribe(email, fpr, admin_flag, delivery)
  raise "#{email} not subscribed: #{sub.errors.full_messages.inspect}" if sub.errors.present?
end
"""


def installed() -> bool:
    return Path(SCHLEUDER).is_file() and LIBRARY.is_dir()


def version() -> str:
    """The installed package's version (Debian's, e.g. 4.0.3-7+deb12u1)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "schleuder"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


class Schleuder:
    """A Schleuder installation of its own in `root`, delivering to 127.0.0.1:`smtp_port`."""

    def __init__(self, root: Path, smtp_port: int) -> None:
        self.root = root
        self.lists = root / "lists"
        for folder in ("lists", "logs", "keyword_handlers", "filters"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        config = root / "schleuder.yml"
        defaults = root / "list-defaults.yml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(
            json.dumps(
                {
                    "lists_dir": str(self.lists),
                    "listlogs_dir": str(root / "logs"),
                    "keyword_handlers_dir": str(root / "keyword_handlers"),
                    "filters_dir": str(root / "filters"),
                    "log_level": "warn",
                    "superadmin": "root@localhost",
                    "keyserver": "",
                    "smtp_settings": {
                        "address": "127.0.0.1",
                        "port": smtp_port,
                        "domain": "localhost",
                        "enable_starttls_auto": False,
                    },
                    "database": {
                        "production": {
                            "adapter": "sqlite3",
                            "database": str(root / "db.sqlite"),
                            "timeout": 5000,
                        }
                    },
                },
                indent=2,
            )
        )
        defaults.write_text(json.dumps(_list_defaults(), indent=2))
        self.env = dict(
            os.environ,
            SCHLEUDER_CONFIG=str(config),
            SCHLEUDER_LIST_DEFAULTS=str(defaults),
            SCHLEUDER_ENV="production",
        )
        self._run(["rake", "db:init"], cwd=LIBRARY)

    def _run(self, argv: list[str], *, cwd: Path | None = None, data: bytes = b"") -> bytes:
        proc = subprocess.run(argv, input=data, capture_output=True, env=self.env, cwd=cwd)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).decode(errors='replace')[-2000:]}"
            )
        return proc.stdout

    def create_list(
        self,
        address: str,
        list_secret_key: bytes,
        public_keys: list[bytes],
        subscriptions: list[tuple[str, str]],
        admin: tuple[str, str],
    ) -> None:
        """A list signing with `list_secret_key`, its keyring holding `public_keys`, one
        subscription (address, fingerprint) per member, and `admin` (address, fingerprint)
        as its admin, with delivery disabled (Schleuder runs no list without an admin)."""
        local, domain = address.split("@", 1)
        listdir = self.lists / domain / local
        listdir.mkdir(parents=True)
        listdir.chmod(0o700)
        self._run(
            ["gpg", "--homedir", str(listdir), "--batch", "--quiet", "--import"],
            data=list_secret_key + b"\n" + b"\n".join(public_keys),
        )
        stop_agent(listdir)
        list_fpr = _secret_fingerprint(listdir)
        wanted = self.root / f"{local}.subscriptions.json"
        wanted.write_text(json.dumps(subscriptions))
        self._run(["ruby", "-e", _CREATE_LIST, address, list_fpr, *admin, str(wanted)])

    def work(self, address: str, message: bytes) -> subprocess.CompletedProcess[bytes]:
        """One post through the list; returns when Schleuder has sent every copy."""
        return subprocess.run(
            [SCHLEUDER, "work", address],
            input=message,
            capture_output=True,
            env=self.env,
            check=False,
        )

    def close(self) -> None:
        for listdir in self.lists.glob("*/*"):
            stop_agent(listdir)


def _list_defaults() -> dict[str, object]:
    """Debian's defaults, except that a post must be validly signed (as the relay requires)."""
    return {
        "send_encrypted_only": True,
        "receive_encrypted_only": False,
        "receive_signed_only": True,
        "receive_authenticated_only": False,
        "receive_from_subscribed_emailaddresses_only": False,
        "receive_admin_only": False,
        "headers_to_meta": ["from", "to", "cc", "date", "sig", "enc"],
        "keep_msgid": True,
        "keywords_admin_only": ["subscribe", "unsubscribe", "delete-key"],
        "keywords_admin_notify": ["add-key"],
        "internal_footer": None,
        "public_footer": None,
        "subject_prefix": None,
        "subject_prefix_in": None,
        "subject_prefix_out": None,
        "bounces_drop_all": False,
        "bounces_drop_on_headers": {"x-spam-flag": "yes"},
        "bounces_notify_admins": True,
        "include_autocrypt_header": True,
        "include_list_headers": True,
        "include_openpgp_header": True,
        "openpgp_header_preference": "signencrypt",
        "max_message_size_kb": 10240,
        "log_level": "warn",
        "logfiles_to_keep": 2,
        "language": "en",
        "forward_all_incoming_to_admins": False,
        "deliver_selfsent": True,
        "set_reply_to_to_sender": False,
        "munge_from": False,
    }


def _secret_fingerprint(home: Path) -> str:
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-secret-keys"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
