#!/usr/bin/env bash
# PostgreSQL for the test suite: on 127.0.0.1:5432, user postgres, trust auth on loopback.
# When one is listening already it only makes sure pg_dump is there; on a fresh Debian
# machine it installs Debian's package, starts its cluster and lets loopback connect
# without a password (a throwaway test machine: nothing but 127.0.0.1 can reach it).
set -euo pipefail

listening() {
  python3 - <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 5432)) == 0 else 1)
PY
}

sudo=""
[[ "$(id -u)" -eq 0 ]] || sudo=sudo

if listening; then
  # A server of its own (a container, another machine's port): the suite still runs pg_dump.
  command -v pg_dump >/dev/null 2>&1 && exit 0
  echo "installing: postgresql-client"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-client
  exit 0
fi
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "installing: postgresql"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
fi
for hba in /etc/postgresql/*/main/pg_hba.conf; do
  if ! $sudo grep -q "^host all postgres 127.0.0.1/32 trust" "$hba"; then
    $sudo sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  fi
done
if [[ -d /run/systemd/system ]]; then
  $sudo systemctl restart postgresql
else
  # No init system (a container): start each cluster directly.
  pg_lsclusters --no-header | while read -r version cluster _; do
    $sudo pg_ctlcluster "$version" "$cluster" restart || $sudo pg_ctlcluster "$version" "$cluster" start
  done
fi
for _ in $(seq 1 30); do
  listening && exit 0
  sleep 1
done
echo "PostgreSQL did not start on 127.0.0.1:5432" >&2
exit 1
