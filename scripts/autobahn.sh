#!/usr/bin/env bash
# Run the Autobahn fuzzingclient against scripts/autobahn_app.py.
#   scripts/autobahn.sh            all 517 cases (about 10 minutes)
#   scripts/autobahn.sh -q         groups 1-10 only (about 20 s)
# The suite lives outside this repository: set AUTOBAHN to its folder (run.sh, install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
AUTOBAHN=${AUTOBAHN:-../shared/tools/autobahn}
PORT=${PORT:-9001}
if [ ! -x "$AUTOBAHN/run.sh" ]; then
  echo "no Autobahn suite at $AUTOBAHN (set AUTOBAHN=/path/to/it)" >&2
  exit 2
fi
"$AUTOBAHN/install.sh" >/dev/null
.venv/bin/python -m harpy scripts.autobahn_app:app --port "$PORT" --log-level warning &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 1 50); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  sleep 0.1
done
"$AUTOBAHN/run.sh" "$@" "ws://127.0.0.1:$PORT/echo"
