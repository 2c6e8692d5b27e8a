#!/usr/bin/env bash
# A normal install works: build the wheel, install it (not editable) into a fresh virtual
# environment, and run the installed `relay` from an empty folder, far from the repository.
# Only the wheel's own files can then serve the migrations and the shipped policies.
# Needs python3 with venv (python3-venv on Debian), gpg, and the package index pip uses.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/relay-wheel-check.XXXXXX")
site="$work/site"
venv="$work/venv"
relay_pid=""

cleanup() {
  if [[ -n "$relay_pid" ]] && kill -0 "$relay_pid" 2>/dev/null; then
    kill -KILL "$relay_pid" 2>/dev/null || true
    wait "$relay_pid" 2>/dev/null || true
  fi
  # gpg started an agent for the relay's GnuPG home; stop it before its folder goes.
  if [[ -d "$site/state/gnupg" ]] && command -v gpgconf >/dev/null 2>&1; then
    gpgconf --homedir "$site/state/gnupg" --kill gpg-agent >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "wheel check FAILED: $*" >&2
  exit 1
}

step() {
  echo "== $*"
}

# Build from a copy of the source: setuptools builds in-tree, and a stale build/ or
# *.egg-info left by earlier builds or the editable install could slip files into the wheel.
step "copying the source"
mkdir -p "$work/dist" "$site"
"$python" - "$repo" "$work/src" <<'EOF'
import fnmatch
import shutil
import sys
from pathlib import Path

repo, target = Path(sys.argv[1]), Path(sys.argv[2])
TOP = {".git", ".venv", "build", "dist", "var"}
ANYWHERE = ("__pycache__", "*.egg-info", ".*_cache")


def ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == repo
    return {n for n in names if (top and n in TOP) or any(fnmatch.fnmatch(n, p) for p in ANYWHERE)}


shutil.copytree(repo, target, ignore=ignore, symlinks=True)
EOF

step "creating a fresh virtual environment"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

step "building the wheel"
"${pip[@]}" wheel --no-deps -w "$work/dist" "$work/src"
wheels=("$work/dist"/*.whl)
[[ ${#wheels[@]} -eq 1 && -f "${wheels[0]}" ]] || fail "expected one wheel in $work/dist"
wheel=${wheels[0]}
echo "built $(basename "$wheel")"

step "checking the wheel's package data"
listing=$("$venv/bin/python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}')
expected=(relay/py.typed relay/migrations/env.py relay/migrations/script.py.mako)
for file in "$repo"/relay/migrations/versions/*.py "$repo"/relay/policies/*.toml \
  "$repo"/relay/web/templates/*.html "$repo"/relay/web/static/*; do
  expected+=("${file#"$repo"/}")
done
[[ " ${expected[*]} " == *" relay/migrations/versions/"* ]] || fail "no migrations in the source"
[[ " ${expected[*]} " == *" relay/policies/"* ]] || fail "no policies in the source"
[[ " ${expected[*]} " == *" relay/web/templates/"* ]] || fail "no console templates in the source"
for file in "${expected[@]}"; do
  grep -qxF "$file" <<<"$listing" || fail "the wheel lacks $file"
done
echo "the wheel holds all ${#expected[@]} data files"

step "installing the wheel"
"${pip[@]}" install "$wheel"
relay=("$venv/bin/relay" --config "$site/relay.toml")

cd "$site"
cat >relay.toml <<'EOF'
[list]
address = "announce@example.org"
name = "Wheel check list"
security_contact = "security@example.org"

[smtp]
host = "127.0.0.1"
# Any free port; the relay prints the one it got.
port = 0

[delivery]
outbox = "outbox"

[storage]
database_url = "sqlite:///state/relay.db"
spool_dir = "state/spool"

[gnupg]
home = "state/gnupg"

[embargo]
# A shipped policy by name: read from the installed package.
policy = "kubernetes-distributors"

[web]
# The console, from the installed package's templates and static files.
enabled = true
port = 0
EOF

installed=$("$venv/bin/python" -c 'import relay; print(relay.__file__)')
[[ "$installed" == "$venv"/* ]] || fail "relay imported from $installed, not the virtual environment"

step "relay init"
"${relay[@]}" init
[[ -s state/relay.db ]] || fail "relay init made no database"
"${relay[@]}" key list --json |
  "$venv/bin/python" -c 'import json, sys; sys.exit(not any("list" in k["owners"] for k in json.load(sys.stdin)))' ||
  fail "relay init made no list key"

step "relay serve"
"${relay[@]}" serve >serve.log 2>&1 &
relay_pid=$!
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/^Embargo Relay listening on 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' serve.log)
  [[ -n "$port" ]] && break
  kill -0 "$relay_pid" 2>/dev/null || { cat serve.log >&2; fail "relay serve exited early"; }
  sleep 0.1
done
[[ -n "$port" ]] || { cat serve.log >&2; fail "relay serve did not listen within 30 s"; }
echo "listening on port $port"
web=""
for _ in $(seq 1 300); do
  web=$(sed -n 's/.*web listening url=\(http:[^ ]*\).*/\1/p' serve.log | head -n 1)
  [[ -n "$web" ]] && break
  sleep 0.1
done
[[ -n "$web" ]] || { cat serve.log >&2; fail "the console did not listen within 30 s"; }
"$venv/bin/python" - "$web" <<'EOF'
import sys
import urllib.request

base = sys.argv[1]
with urllib.request.urlopen(f"{base}/login", timeout=10) as answer:
    page = answer.read().decode()
    assert answer.status == 200 and 'name="password"' in page, answer.status
    assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
with urllib.request.urlopen(f"{base}/static/console.js", timeout=10) as answer:
    assert answer.status == 200 and answer.read(), answer.status
print(f"console at {base}: the login page and its script answered 200")
EOF

"$venv/bin/python" - "$port" <<'EOF'
import smtplib
import sys

with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as smtp:
    code, _ = smtp.ehlo("wheel-check.example")
    assert code == 250, code
    code, _ = smtp.noop()
    assert code == 250, code
print("SMTP EHLO and NOOP answered 250")
EOF

kill -TERM "$relay_pid"
for _ in $(seq 1 300); do
  kill -0 "$relay_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$relay_pid" 2>/dev/null && { cat serve.log >&2; fail "relay serve ignored SIGTERM for 30 s"; }
status=0
wait "$relay_pid" || status=$?
relay_pid=""
[[ $status -eq 0 ]] || { cat serve.log >&2; fail "relay serve exited $status after SIGTERM"; }
echo "relay serve stopped on SIGTERM with exit code 0"

step "relay advisory"
# A lift one day ahead breaks the policy's seven days of notice: its warning shows that the
# shipped policy was read and applied.
"${relay[@]}" advisory create WHEEL-1 --title "Wheel check" --lift "+1d" 2>create.err
grep -q "(min_notice)" create.err || { cat create.err >&2; fail "no policy warning"; }
"${relay[@]}" advisory list
"${relay[@]}" advisory list --json | grep -q '"WHEEL-1"' || fail "advisory list lacks WHEEL-1"

echo "wheel check passed: $(basename "$wheel") installs, migrates, serves and answers"
