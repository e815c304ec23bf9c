#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis: every check,
# every phase (examples, coverage, fuzzing, stateful through the declared links), first
# against a fresh single node, then against one node of a fresh 3-node cluster. Each
# target runs with a fixed seed and with a random one; both seeds are printed, and
# `SEED=N tools/schemathesis.sh` reruns one. Exit status 1 on any failure or error.
#
# Needs python3 (with venv; on Debian, apt-get install python3-venv) and network access
# to PyPI the first time: schemathesis is installed into target/schemathesis-venv.
# EXAMPLES (default 100) is the number of examples per operation and phase. One worker:
# with two, schemathesis itself now and then fails inside Python (an AST recursion error).
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
VENV=target/schemathesis-venv
EXAMPLES=${EXAMPLES:-100}
KVS=${KVS:-target/release/kvs}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-st.XXXXXX")

# The nodes' pids go to a file: `start` runs in a command substitution (a subshell),
# where a variable it set would be lost and the nodes left running.
cleanup() {
  local pid
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$WORK/pids"
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version | grep -q "$ST_VERSION"; then
  echo "installing schemathesis $ST_VERSION into $VENV..." >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
[ -x "$KVS" ] || cargo build --release --locked --quiet --bin kvs

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME [SEED_PORT]: a node on a free port; prints the port.
start() {
  local name=$1 seed=${2:-} port
  port=$(free_port)
  local args=(serve --listen "127.0.0.1:$port" --data-dir "$WORK/$name" --node-name "$name"
              --gossip-interval 100ms --sync-interval 500ms --join-timeout 3s)
  [ -n "$seed" ] && args+=(--seeds "127.0.0.1:$seed")
  "$KVS" "${args[@]}" >> "$WORK/$name.log" 2>&1 &
  echo "$!" >> "$WORK/pids"
  echo "$port"
}

wait_ready() {
  local deadline=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health/ready")" = 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "node on port $1 not ready after 30 s" >&2; return 1; }
    sleep 0.1
  done
}

FAILED=0
# fuzz LABEL PORT SEED
fuzz() {
  echo "== schemathesis against $1 (seed $3, $EXAMPLES examples per operation)"
  if ! "$VENV/bin/st" --config-file tools/schemathesis.toml run "http://127.0.0.1:$2/openapi.json" --checks all \
      --max-examples "$EXAMPLES" --seed "$3" --workers 1 --no-color; then
    FAILED=1
    echo "FAILED: rerun with SEED=$3 tools/schemathesis.sh" >&2
  fi
}

FIXED_SEED=20261124
RANDOM_SEED=${SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seeds: fixed $FIXED_SEED, random $RANDOM_SEED"

single=$(start single)
wait_ready "$single"
[ -n "${SEED:-}" ] || fuzz "a fresh single node" "$single" "$FIXED_SEED"
fuzz "a fresh single node" "$single" "$RANDOM_SEED"

n1=$(start n1)
wait_ready "$n1"
n2=$(start n2 "$n1")
n3=$(start n3 "$n1")
wait_ready "$n2"
wait_ready "$n3"
[ -n "${SEED:-}" ] || fuzz "node 2 of a 3-node cluster" "$n2" "$FIXED_SEED"
fuzz "node 2 of a 3-node cluster" "$n2" "$RANDOM_SEED"

for log in "$WORK"/*.log; do
  if grep -q '"level":"ERROR"\| ERROR ' "$log"; then
    echo "errors in $(basename "$log"):" >&2; grep ' ERROR \|"level":"ERROR"' "$log" | head -5 >&2
  fi
done
exit "$FAILED"
