"""Settings: one TOML file, validated on load, passed in (never a global).

Relative paths resolve against the folder of the config file, so a relay
directory can be moved as a whole. `--config PATH` or `RELAY_CONFIG` picks the
file; errors name the offending key and never show a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.core.errors import ConfigError

ENV_VAR = "RELAY_CONFIG"
DEFAULT_FILE = "config.example.toml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")


def parse_duration(value: Any) -> timedelta:
    """Accept `90`, `"30s"`, `"5m"`, `"4h"`, `"5d"`, `"1w"` or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError("expected a duration such as 90, '30s', '5m', '4h' or '5d'")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address; a name is not resolved (so it is not loopback)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _address(value: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise ValueError(f"not an email address: {value!r}")
    return value.lower()


Address = Annotated[str, BeforeValidator(_address)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListSettings(_Section):
    address: Address
    name: str = "Private distributors list"
    security_contact: Address
    # Appended to every copy's notice; names what members must do on a leak.
    list_id: str | None = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def list_id_header(self) -> str:
        ident = self.list_id or self.address.replace("@", ".")
        return f"{self.name} <{ident}>"


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=0, le=65535)
    max_message_size: int = Field(10 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(10, ge=1)
    hostname: str | None = None
    # Open sessions at once, in all and from one client address; beyond: 421 4.7.0.
    max_connections: int = Field(100, ge=1)
    max_connections_per_ip: int = Field(10, ge=1)
    # A session without progress (a finished mail transaction, or DATA flowing) this
    # long is cut with 421 4.4.2; commands alone (NOOP, RSET ...) are no progress.
    idle_timeout: Duration = timedelta(seconds=60)
    # Replies with a 5xx code to commands before the session is cut with 421 4.7.0.
    max_bad_commands: int = Field(10, ge=1)
    # STARTTLS (RFC 3207): the certificate chain and its private key, PEM files. Both or
    # neither; re-read on SIGHUP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # MAIL before STARTTLS is refused 530 5.7.0. Unset: required whenever `host` is not a
    # loopback address (and then tls_cert and tls_key must be set).
    require_tls: bool | None = None
    # A bounce (to the list's VERP address) larger than this is refused 552 5.3.4.
    max_bounce_size: int = Field(256 * 1024, ge=1024)

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def tls_required(self) -> bool:
        return self.require_tls if self.require_tls is not None else not self.is_loopback

    @field_validator("idle_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @model_validator(mode="after")
    def _caps(self) -> SmtpSettings:
        if self.max_connections_per_ip > self.max_connections:
            raise ValueError("'max_connections_per_ip' must not exceed 'max_connections'")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both 'tls_cert' and 'tls_key', or neither")
        if self.tls_required and self.tls_cert is None:
            raise ValueError(
                "TLS is required (require_tls, or a host that is not loopback): "
                "set 'tls_cert' and 'tls_key'"
            )
        return self


class DeliverySettings(_Section):
    smarthost: str | None = None
    outbox: Path | None = None
    # Concurrent OpenPGP jobs (gpg processes): one per core is the sweet spot.
    workers: int = Field(2, ge=1, le=32)
    # Concurrent SMTP sessions to the next hop, so sending overlaps encryption.
    connections: int = Field(4, ge=1, le=64)
    min_backoff: Duration = timedelta(minutes=5)
    max_backoff: Duration = timedelta(hours=4)
    queue_lifetime: Duration = timedelta(days=5)
    connect_timeout: Duration = timedelta(seconds=30)
    # How long a claimed delivery stays leased before another pass may retry it.
    lease_for: Duration = timedelta(minutes=10)
    poll_interval: Duration = timedelta(seconds=5)
    # Unexpected errors preparing or sending one copy before it ends `failed`
    # ("internal-error"), so no copy is retried forever.
    max_errors: int = Field(5, ge=1, le=100)
    # TLS to the smarthost: "starttls" (required, never a fallback to plaintext), "implicit"
    # (TLS from the first byte, port 465) or "none" (plaintext: only ever set on purpose).
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    # CA certificates (PEM) to verify the smarthost with, for a private CA; none: the
    # system's. The host name is always verified against the certificate.
    ca_file: Path | None = None
    # SMTP AUTH: the user, and the password from a file or an environment variable (never
    # the config file itself).
    auth_user: str | None = None
    auth_password_file: Path | None = None
    auth_password_env: str | None = None

    @field_validator("smarthost")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected 'host:port', for example '127.0.0.1:25'")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> DeliverySettings:
        if (self.smarthost is None) == (self.outbox is None):
            raise ValueError("set exactly one of 'smarthost' or 'outbox'")
        if self.min_backoff > self.max_backoff:
            raise ValueError("'min_backoff' must not exceed 'max_backoff'")
        if self.auth_password_file is not None and self.auth_password_env is not None:
            raise ValueError("set one of 'auth_password_file' and 'auth_password_env'")
        has_password = self.auth_password_file is not None or self.auth_password_env is not None
        if has_password and not self.auth_user:
            raise ValueError("'auth_user' is needed with a password")
        if self.auth_user and not has_password:
            raise ValueError("set 'auth_password_file' or 'auth_password_env' for 'auth_user'")
        if self.auth_user and self.tls == "none":
            raise ValueError('SMTP AUTH is never sent in plaintext: auth_user with tls = "none"')
        return self

    @property
    def smarthost_address(self) -> tuple[str, int]:
        assert self.smarthost is not None
        host, _, port = self.smarthost.rpartition(":")
        return host.strip("[]"), int(port)


class StorageSettings(_Section):
    database_url: str = "sqlite:///var/relay.db"
    # Where a relay before 0.2 kept posts as files; `relay init` and `relay serve` move
    # what is there into the database (sealed). Nothing is written here any more.
    spool_dir: Path = Path("var/spool")


class ClusterSettings(_Section):
    # This node's name in `relay status` and on the copies it claims; empty: the host name
    # (give each node on one host a name of its own).
    node_name: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    # How soon another node takes over the scheduler from one that stopped answering.
    failover_after: Duration = timedelta(seconds=30)

    @field_validator("failover_after")
    @classmethod
    def _at_least(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=3):
            raise ValueError("must be at least 3s")
        return value


# The OpenPGP implementations that can hold the list key (relay/core/keyrings.py).
Backend = Literal["gnupg", "sequoia"]
BACKENDS: tuple[Backend, ...] = ("gnupg", "sequoia")


class GnupgSettings(_Section):
    # Which OpenPGP implementation holds the list key: "gnupg" (the gpg program, in `home`)
    # or "sequoia" (in-process pysequoia, in the `keyring` folder).
    backend: Backend = "gnupg"
    home: Path = Path("var/gnupg")
    binary: str = "gpg"
    keyring: Path = Path("var/keyring")
    # The Sequoia keyring's secret-key passphrase (whichever backend runs: `relay keyring
    # migrate` writes that keyring): the first line of a file, or the value of an environment
    # variable (its name here); neither: the key file is not encrypted.
    passphrase_file: Path | None = None
    passphrase_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_passphrase_source(self) -> GnupgSettings:
        if self.passphrase_file is not None and self.passphrase_env is not None:
            raise ValueError("give passphrase_file or passphrase_env, not both")
        return self

    @property
    def keyring_path(self) -> Path:
        """Where the chosen backend keeps its keys."""
        return self.home if self.backend == "gnupg" else self.keyring


class IntakeSettings(_Section):
    # A signature older than this at arrival is refused: a post legitimately waits in a
    # sending MTA's queue for at most its retry lifetime (Postfix: 5 days).
    max_signature_age: Duration = timedelta(days=5)
    # How far a signature may claim to come from the future (the sender's clock ahead).
    max_clock_skew: Duration = timedelta(minutes=5)
    # A From address outside the signer's registered identity: "refuse" (550 5.7.1) or
    # "flag" (accepted, marked in the audit trail and in the copies' notice).
    from_mismatch: Literal["refuse", "flag"] = "refuse"

    @field_validator("max_signature_age")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @field_validator("max_clock_skew")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value


class EmbargoSettings(_Section):
    # The list's timing rules (a policies/*.toml file); none: no timing rules.
    policy: Path | None = None
    # Where an advisory's public text goes at its lift (plaintext, and only then).
    public_addresses: tuple[Address, ...] = ()
    # Reminders to the SRC senders and the security contact, this long before a lift.
    reminders: tuple[Duration, ...] = (timedelta(hours=48), timedelta(hours=1))
    # Warn when an embargoed advisory still has no lift time this long after it was created.
    missing_lift_warning_after: Duration = timedelta(days=3)
    # How often the scheduler re-reads the database (changes made by another process).
    check_interval: Duration = timedelta(minutes=1)
    # A signed post that brings a lift earlier (or asks for an early lift) waits for a
    # second look: `relay advisory confirm`, or X-Confirm from another authorised sender.
    confirm_earlier_by_mail: bool = True

    @field_validator("reminders")
    @classmethod
    def _reminders(cls, value: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
        if any(offset <= timedelta(0) for offset in value):
            raise ValueError("reminder offsets must be longer than zero")
        if len(set(value)) != len(value):
            raise ValueError("reminder offsets must differ from each other")
        return tuple(sorted(value, reverse=True))

    @field_validator("missing_lift_warning_after", "check_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value


class MembersSettings(_Section):
    # Remind a member (encrypted) this long before one of its keys expires.
    key_expiry_warning: Duration = timedelta(days=30)
    # Remind members who have not said how far they got with an advisory this long before its lift.
    status_reminder_before: Duration = timedelta(days=2)

    # This many hard bounces of a member's copies within bounce_window mark it `bouncing`
    # and tell the security contact.
    bounce_limit: int = Field(3, ge=1)
    bounce_window: Duration = timedelta(days=7)

    @field_validator("key_expiry_warning", "status_reminder_before", "bounce_window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value


class MetricsSettings(_Section):
    # The Prometheus endpoint (GET /metrics); off unless enabled. Loopback by default:
    # the counts say how busy the list is, which is itself worth keeping private.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9125, ge=0, le=65535)


class WebSettings(_Section):
    # The operator's console (`relay web`, or `relay serve` when enabled): pages and the
    # HTTP API under /api/v1. Loopback by default; any other host needs tls_cert/tls_key.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8480, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The names browsers reach the console by (a proxy's, say), besides `host` and the
    # loopback names: a request naming another Host is refused, so a page that rebinds
    # its own DNS name to the console's address gets nothing from it.
    server_names: list[str] = []
    # A login session ends after this long without a request, and at the latest after
    # session_max however busy it is.
    session_idle: Duration = timedelta(minutes=30)
    session_max: Duration = timedelta(hours=12)
    # Failed logins allowed per account name and per client address within login_window.
    login_attempts: int = Field(5, ge=1)
    login_window: Duration = timedelta(minutes=15)

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> WebSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("[web] tls_cert and tls_key go together")
        if self.tls_cert is None and not is_loopback(self.host):
            raise ValueError(
                f"[web] host {self.host!r} is not loopback: set tls_cert and tls_key (HTTPS)"
            )
        return self

    @property
    def https(self) -> bool:
        return self.tls_cert is not None


class LogSettings(_Section):
    # "text" (key=value lines) or "json" (one JSON object per line), in the log file and
    # on standard error. The log file itself is `relay --log-file` (relay/cli/context.py).
    format: Literal["text", "json"] = "text"
    # The relay's own records at this level and above (libraries: warnings only).
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Section):
    list: ListSettings
    smtp: SmtpSettings = SmtpSettings()
    intake: IntakeSettings = IntakeSettings()
    delivery: DeliverySettings
    storage: StorageSettings = StorageSettings()
    gnupg: GnupgSettings = GnupgSettings()
    embargo: EmbargoSettings = EmbargoSettings()
    members: MembersSettings = MembersSettings()
    cluster: ClusterSettings = ClusterSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    log: LogSettings = LogSettings()
    source: Path | None = None


# The policies this package ships, by name (`policy = "kubernetes-distributors"`).
SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"


def _policy_path(base: Path, path: Path) -> Path:
    """A shipped policy by its name, else a file relative to the config's folder."""
    if len(path.parts) == 1 and path.suffix == "":
        shipped = SHIPPED_POLICIES / f"{path}.toml"
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in SHIPPED_POLICIES.glob("*.toml")))
            raise ConfigError(f"embargo.policy: no shipped policy {str(path)!r} (shipped: {names})")
        return shipped
    return _resolve(base, path)


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_database_url(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:":
            return prefix + str(_resolve(base, Path(rest)))
    return url


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load and validate the config; relative paths resolve against its folder."""
    chosen = Path(path or os.environ.get(ENV_VAR) or DEFAULT_FILE)
    try:
        raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {chosen}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {chosen}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{chosen}: invalid configuration\n{_format_error(exc)}") from None
    base = chosen.resolve().parent
    delivery = settings.delivery
    for key in ("outbox", "ca_file", "auth_password_file"):
        value = getattr(delivery, key)
        if value is not None:
            delivery = delivery.model_copy(update={key: _resolve(base, value)})
    smtp = settings.smtp
    for key in ("tls_cert", "tls_key"):
        value = getattr(smtp, key)
        if value is not None:
            smtp = smtp.model_copy(update={key: _resolve(base, value)})
    web = settings.web
    for key in ("tls_cert", "tls_key"):
        value = getattr(web, key)
        if value is not None:
            web = web.model_copy(update={key: _resolve(base, value)})
    embargo = settings.embargo
    if embargo.policy is not None:
        embargo = embargo.model_copy(update={"policy": _policy_path(base, embargo.policy)})
    return settings.model_copy(
        update={
            "delivery": delivery,
            "smtp": smtp,
            "web": web,
            "embargo": embargo,
            "storage": settings.storage.model_copy(
                update={
                    "database_url": _resolve_database_url(base, settings.storage.database_url),
                    "spool_dir": _resolve(base, settings.storage.spool_dir),
                }
            ),
            "gnupg": settings.gnupg.model_copy(
                update={
                    "home": _resolve(base, settings.gnupg.home),
                    "keyring": _resolve(base, settings.gnupg.keyring),
                    "passphrase_file": None
                    if settings.gnupg.passphrase_file is None
                    else _resolve(base, settings.gnupg.passphrase_file),
                }
            ),
            "source": chosen.resolve(),
        }
    )
