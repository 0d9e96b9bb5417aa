#!/usr/bin/env bash
# The local platform: a Prefect server on 127.0.0.1 and the process serving the train-clipsep
# deployment (flows/serve.py). PIDs and logs live in .platform/ (git-ignored).
#   scripts/platform.sh start [flows.serve options, e.g. --cron "0 3 * * *" --profile tiny]
#   scripts/platform.sh stop | status
# Point it at a team's Prefect server instead: export PREFECT_API_URL=https://prefect.example/api
# (no local server is started then). PREFECT_PORT changes the local port (default 4200).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
STATE=.platform
PORT=${PREFECT_PORT:-4200}
LOCAL_API="http://127.0.0.1:${PORT}/api"
export PREFECT_HOME=${PREFECT_HOME:-$PWD/$STATE/prefect}
export PREFECT_API_URL=${PREFECT_API_URL:-$LOCAL_API}
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$PORT

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start_server() {
  if [[ "$PREFECT_API_URL" != "$LOCAL_API" ]]; then
    echo "using the Prefect API at $PREFECT_API_URL (no local server)"; return
  fi
  if running server; then echo "Prefect server already running (PID $(cat $STATE/server.pid))"; return; fi
  setsid .venv/bin/prefect server start --host 127.0.0.1 --port "$PORT" >"$STATE/server.log" 2>&1 &
  echo $! >"$STATE/server.pid"
  echo -n "starting Prefect server (PID $!) on http://127.0.0.1:$PORT "
  for _ in $(seq 1 120); do
    if curl -sf "$LOCAL_API/health" >/dev/null; then echo " ready"; return; fi
    running server || { echo; tail -20 "$STATE/server.log"; exit 1; }
    echo -n "."; sleep 1
  done
  echo " timed out; see $STATE/server.log"; exit 1
}

start_runner() {
  if running runner; then echo "deployment runner already running (PID $(cat $STATE/runner.pid))"; return; fi
  setsid .venv/bin/python -m flows.serve "$@" >"$STATE/runner.log" 2>&1 &
  echo $! >"$STATE/runner.pid"
  echo "deployment runner (PID $!) serving train-clipsep; log: $STATE/runner.log"
}

stop_one() {  # SIGTERM by PID, wait, then SIGKILL
  local name=$1
  running "$name" || { rm -f "$STATE/$name.pid"; return; }
  local pid; pid=$(cat "$STATE/$name.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$STATE/$name.pid"; echo "stopped $name (PID $pid)"
}

case "${1:-start}" in
  start)
    shift || true
    mkdir -p "$STATE" "$PREFECT_HOME"
    start_server; start_runner "$@"
    cat <<MSG
Prefect UI:  ${PREFECT_API_URL%/api}
Trigger now: PREFECT_API_URL=$PREFECT_API_URL .venv/bin/prefect deployment run 'train-clipsep/weekly' --watch
   (with overrides: -p profile=tiny -p 'overrides=["train.steps=8"]')
Stop:        make platform-stop
MSG
    ;;
  stop) stop_one runner; stop_one server ;;  # runner first: it talks to the server
  status)
    for name in server runner; do
      if running "$name"; then echo "$name: running (PID $(cat $STATE/$name.pid))"; else echo "$name: stopped"; fi
    done ;;
  *) echo "usage: $0 start [flows.serve options] | stop | status" >&2; exit 2 ;;
esac
