#!/usr/bin/env bash
# `make deploy` until the lab hosts exist: run estafeta from .venv on
# loopback with a demo domain, deliver one message over SMTP, show it.
#   scripts/deploy-local.sh        start (or restart) and demonstrate
#   scripts/deploy-local.sh stop   stop the server started here
set -euo pipefail
cd "$(dirname "$0")/.."
LAB="$PWD/.lab"
VENV="$PWD/.venv"
CONFIG="$LAB/estafeta.toml"
PIDFILE="$LAB/estafeta.pid"
LOG="$LAB/estafeta.log"
SMTP_PORT="${ESTAFETA_LAB_SMTP_PORT:-2525}"
IMAP_PORT="${ESTAFETA_LAB_IMAP_PORT:-1143}"
USER_ADDRESS="demo@lab.test"

stop() {
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PIDFILE")"
    for _ in $(seq 100); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.1; done
    echo "stopped estafeta (pid $(cat "$PIDFILE"))"
  fi
  rm -f "$PIDFILE"
}

if [[ "${1:-}" == "stop" ]]; then
  stop
  exit 0
fi

estafeta() { "$VENV/bin/estafeta" -c "$CONFIG" "$@"; }

mkdir -p "$LAB"
if [[ ! -f "$CONFIG" ]] || ! grep -q '^imap = ' "$CONFIG"; then
  cat >"$CONFIG" <<TOML
# Demo configuration written by scripts/deploy-local.sh (make deploy).
hostname = "mx.lab.test"
data_dir = "data"
domains = ["lab.test"]

[listen]
smtp = ["127.0.0.1:$SMTP_PORT"]
imap = ["127.0.0.1:$IMAP_PORT"]

# Loopback only, no certificate in this demo: allow LOGIN without TLS.
[auth]
allow_plaintext = true

[log]
level = "info"
format = "text"
TOML
fi
estafeta check

if ! estafeta user list | grep -qx "$USER_ADDRESS"; then
  # A demo password, kept next to the config so you can use it later.
  [[ -f "$LAB/demo-password" ]] || head -c 18 /dev/urandom | base64 >"$LAB/demo-password"
  chmod 600 "$LAB/demo-password"
  estafeta user add "$USER_ADDRESS" --password-stdin <"$LAB/demo-password"
  estafeta alias add "postmaster@lab.test" "$USER_ADDRESS"
fi

stop
nohup "$VENV/bin/estafeta" -c "$CONFIG" serve >>"$LOG" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 100); do
  if "$VENV/bin/python" - "$SMTP_PORT" <<'PY' 2>/dev/null; then break; fi
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PY
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo "estafeta failed to start:"; tail -20 "$LOG"; exit 1; }
  sleep 0.1
done
echo "estafeta is running (pid $(cat "$PIDFILE")), SMTP on 127.0.0.1:$SMTP_PORT"

SUBJECT="Hello from make deploy $(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$VENV/bin/python" - "$SMTP_PORT" "$SUBJECT" <<'PY'
import smtplib, sys
from email.message import EmailMessage
port, subject = int(sys.argv[1]), sys.argv[2]
msg = EmailMessage()
msg["From"] = "Deploy Script <deploy@outside.test>"
msg["To"] = "postmaster@lab.test"
msg["Subject"] = subject
msg.set_content("If you can read this, estafeta accepted, stored and indexed it.\n")
with smtplib.SMTP("127.0.0.1", port) as smtp:
    smtp.ehlo("deploy.outside.test")
    reply = smtp.send_message(msg)
    print(f"sent over SMTP to postmaster@lab.test (alias of demo@lab.test): refused={reply}")
PY

echo
echo "== INBOX of $USER_ADDRESS (estafeta mail ls)"
estafeta mail ls "$USER_ADDRESS"
UID_LAST=$(estafeta mail ls "$USER_ADDRESS" | awk 'NR>1 {u=$1} END {print u}')
echo
echo "== The message as stored (estafeta mail cat $USER_ADDRESS $UID_LAST)"
estafeta mail cat "$USER_ADDRESS" "$UID_LAST"
grep -q "$SUBJECT" < <(estafeta mail cat "$USER_ADDRESS" "$UID_LAST") || { echo "message not found"; exit 1; }

echo
echo "== The same INBOX over IMAP (imaplib, 127.0.0.1:$IMAP_PORT)"
"$VENV/bin/python" - "$IMAP_PORT" "$USER_ADDRESS" "$LAB/demo-password" "$SUBJECT" <<'PY'
import imaplib, sys
port, user, password_file, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
password = open(password_file).read().rstrip("\n")
imap = imaplib.IMAP4("127.0.0.1", port)
imap.login(user, password)
status, data = imap.select("INBOX", readonly=True)
print(f"SELECT INBOX: {data[0].decode()} messages")
status, found = imap.search(None, "SUBJECT", f'"{subject}"')
last = found[0].split()[-1]
status, rows = imap.fetch(last, "(UID ENVELOPE)")
print(f"FETCH {last.decode()}: {rows[0].decode()[:160]}...")
imap.logout()
PY
cat <<MSG

== Delivered. Connect yourself:
  swaks --server 127.0.0.1:$SMTP_PORT --to $USER_ADDRESS
  IMAP: 127.0.0.1:$IMAP_PORT, user $USER_ADDRESS, password in $LAB/demo-password
  .venv/bin/estafeta -c $CONFIG mail ls $USER_ADDRESS
  log: $LOG    config: $CONFIG    mail: $LAB/data/mail/lab.test/demo/
  stop it: make stop
MSG
