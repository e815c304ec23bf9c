#!/usr/bin/env bash
# End-to-end scenarios against real kvs processes on loopback.
#
# Builds the release binaries, starts nodes on free ports in a temporary directory,
# polls with deadlines (never a fixed sleep), kills only the processes it started, and
# prints one line per scenario, then "N passed, N failed". Exit status 1 if any failed.
# Needs: cargo, curl, python3; root and iproute2 for the network-namespace scenario.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-it.XXXXXX")
KVS="$ROOT/target/release/kvs"
FIXTURES="$ROOT/target/release/kvs-fixtures"
declare -A PIDS=()   # node name -> pid (inside a scenario's subshell)
declare -A PORTS=()  # node name -> port
STARTED="$WORK/started.pids"   # every pid this script started, for the final cleanup
PASSED=0
FAILED=0
FAILED_NAMES=()

cleanup() {
  local pid
  if [ -f "$STARTED" ]; then
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$STARTED"
  fi
  # tmpfs mounts a scenario made (disk_full_recovers_and_converges)
  awk -v work="$WORK" 'index($2, work) == 1 { print $2 }' /proc/mounts | xargs -r -n1 umount -l
  # network namespaces and links a scenario made (network_namespaces_find_peers_by_name)
  if [ -f "$WORK/netns" ]; then netns_down "$WORK/netns"; fi
  if [ "${KEEP_WORK:-}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }

echo "building release binaries..." >&2
cargo build --release --locked --quiet --workspace --bins

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# json FIELD: reads JSON on stdin, prints a top-level field (python3 does the parsing).
json() { python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(v if not isinstance(v,(dict,list)) else json.dumps(v))' "$1"; }

url() { echo "${SCHEME:-http}://127.0.0.1:${PORTS[$1]}"; }

# Inside a scenario that sets them: TLS_DIR (certificates from `kvs certs`, a token key
# and a cluster key) makes nodes serve TLS with mutual TLS between peers and require
# tokens; CURL_EXTRA is what every curl of the helpers adds (--cacert, the token).
TLS_DIR=""
CURL_EXTRA=()
curl() { command curl "${CURL_EXTRA[@]}" "$@"; }

# start NAME DATA_DIR [SEED_NODE...]: starts a node (reusing its port on restart).
start() {
  local name=$1 data=$2; shift 2
  local port=${PORTS[$name]:-$(free_port)}
  PORTS[$name]=$port
  local seeds="" seed
  for seed in "$@"; do seeds="${seeds:+$seeds,}127.0.0.1:${PORTS[$seed]}"; done
  local args=(--listen "127.0.0.1:$port" --data-dir "$data" --node-name "$name"
              --sync-interval 200ms --gossip-interval 100ms --join-timeout 3s)
  [ -n "$seeds" ] && args+=(--seeds "$seeds")
  if [ -n "$TLS_DIR" ]; then
    args+=(--tls-cert "$TLS_DIR/$name.pem" --tls-key "$TLS_DIR/$name-key.pem"
           --tls-ca "$TLS_DIR/ca.pem" --tls-peer-auth mtls
           --auth-public-key "$TLS_DIR/token-public.pem" --cluster-key-file "$TLS_DIR/cluster.key")
  fi
  "$KVS" "${args[@]}" > >(sed -u "s/^/[$name] /" >> "$WORK/$SCENARIO.log") 2>&1 &
  PIDS[$name]=$!
  echo "$!" >> "$STARTED"
}

kill9() { kill -9 "${PIDS[$1]}"; wait "${PIDS[$1]}" 2>/dev/null || true; unset "PIDS[$1]"; }

stop_all() {
  local name
  for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
  for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null || true; done
  PIDS=(); PORTS=()
}

# eventually SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
eventually() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "timed out after ${seconds}s waiting for: $what"; return 1; fi
    sleep 0.05   # the poll interval, not a wait for an outcome
  done
}

is_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$(url "$1")/health/ready")" = 200 ]; }
ready() { local n; for n in "$@"; do eventually 30 "$n ready" is_ready "$n"; done; }

roots_equal() {
  local first="" n root
  for n in "$@"; do
    root=$(curl -sf "$(url "$n")/health/info" | json merkle_root) || return 1
    if [ -z "$first" ]; then first=$root; elif [ "$root" != "$first" ]; then return 1; fi
  done
}
converged() { eventually 60 "equal Merkle roots on $*" roots_equal "$@"; }

status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
expect_status() { local want=$1; shift; local got; got=$(status_of "$@"); [ "$got" = "$want" ] || { log "expected $want, got $got: curl $*"; return 1; }; }
post_todo() { curl -sf -X POST "$(url "$1")/todos" -H 'content-type: application/json' -d "$2"; }
todo_status_is() { [ "$(status_of "$(url "$1")/todos/$2")" = "$3" ]; }
todo_field_is() { [ "$(curl -sf "$(url "$1")/todos/$2" | json "$3")" = "$4" ]; }
count_is() { [ "$(curl -sf "$(url "$1")/health/info" | json todo_count)" = "$2" ]; }

three_nodes() {
  start n1 "$WORK/$SCENARIO/n1"
  ready n1
  start n2 "$WORK/$SCENARIO/n2" n1
  start n3 "$WORK/$SCENARIO/n3" n1
  ready n2 n3
}

# ---------------------------------------------------------------- scenarios

scenario_crud_on_every_node() {
  three_nodes
  local n id
  for n in n1 n2 n3; do
    id=$(post_todo "$n" "{\"todo\":\"crud on $n\",\"extern_id\":\"crud-$n\"}" | json id)
    expect_status 200 "$(url "$n")/todos/$id"
    expect_status 200 -X PATCH "$(url "$n")/todos/$id" -H 'content-type: application/json' -d '{"completed":true}'
    todo_field_is "$n" "$id" completed True
    expect_status 204 -X DELETE "$(url "$n")/todos/$id"
    expect_status 404 "$(url "$n")/todos/$id"
    expect_status 201 -X PUT "$(url "$n")/kv/crud/$n" -H 'content-type: application/json' -d '{"on":"'"$n"'"}'
    expect_status 200 "$(url "$n")/kv/crud/$n"
    expect_status 204 -X DELETE "$(url "$n")/kv/crud/$n"
  done
}

scenario_replication() {
  three_nodes
  local id
  id=$(post_todo n1 '{"todo":"replicate","extern_id":"replicate"}' | json id)
  eventually 10 "create on n2" todo_status_is n2 "$id" 200
  eventually 10 "create on n3" todo_status_is n3 "$id" 200
  expect_status 200 -X PATCH "$(url n2)/todos/$id" -H 'content-type: application/json' -d '{"todo":"updated on n2"}'
  eventually 10 "update on n1" todo_field_is n1 "$id" todo "updated on n2"
  eventually 10 "update on n3" todo_field_is n3 "$id" todo "updated on n2"
  expect_status 204 -X DELETE "$(url n3)/todos/$id"
  eventually 10 "delete on n1" todo_status_is n1 "$id" 404
  eventually 10 "delete on n2" todo_status_is n2 "$id" 404
  converged n1 n2 n3
}

scenario_late_joiner_bootstraps() {
  start n1 "$WORK/$SCENARIO/n1"
  ready n1
  seq 1 1200 | xargs -P 16 -I{} curl -sf -o /dev/null -X POST "$(url n1)/todos" \
    -H 'content-type: application/json' -d '{"todo":"bulk {}","extern_id":"bulk-{}"}'
  count_is n1 1200
  start n2 "$WORK/$SCENARIO/n2" n1
  ready n2
  count_is n2 1200   # ready means synced: everything is there already
  converged n1 n2
}

scenario_kill9_and_restart_catches_up() {
  three_nodes
  kill9 n2
  local i
  for i in $(seq 1 50); do post_todo n1 "{\"todo\":\"while n2 is down $i\"}" >/dev/null; done
  start n2 "$WORK/$SCENARIO/n2" n1
  ready n2
  converged n1 n2 n3
  count_is n2 50
}

scenario_delete_while_down_stays_deleted() {
  three_nodes
  local id
  id=$(post_todo n1 '{"todo":"doomed","extern_id":"doomed"}' | json id)
  converged n1 n2 n3
  kill9 n3
  expect_status 204 -X DELETE "$(url n1)/todos/$id"
  start n3 "$WORK/$SCENARIO/n3" n1
  ready n3
  converged n1 n2 n3
  todo_status_is n3 "$id" 404
  start n4 "$WORK/$SCENARIO/n4" n2
  ready n4
  converged n1 n2 n3 n4
  todo_status_is n4 "$id" 404
}

scenario_concurrent_updates_converge() {
  three_nodes
  local id round
  id=$(post_todo n1 '{"todo":"contested","extern_id":"contested"}' | json id)
  converged n1 n2 n3
  local first second
  for round in 1 2 3 4 5; do
    curl -sf -o /dev/null -X PATCH "$(url n1)/todos/$id" -H 'content-type: application/json' -d "{\"todo\":\"n1 round $round\"}" &
    first=$!
    curl -sf -o /dev/null -X PATCH "$(url n2)/todos/$id" -H 'content-type: application/json' -d "{\"todo\":\"n2 round $round\"}" &
    second=$!
    wait "$first" "$second"
  done
  converged n1 n2 n3
  local a b c
  a=$(curl -sf "$(url n1)/todos/$id"); b=$(curl -sf "$(url n2)/todos/$id"); c=$(curl -sf "$(url n3)/todos/$id")
  [ "$a" = "$b" ] && [ "$b" = "$c" ] || { log "nodes disagree: $a / $b / $c"; return 1; }
}

# Every key in expected.tsv, on node $1: the body and ETag, or 404 for a delete.
# The disk of one node of three fills up (a tmpfs; needs root, skipped otherwise): it
# refuses writes with 507 and reports not ready, keeps serving reads, recovers by itself
# once space is freed, and the cluster converges with every write made meanwhile.
scenario_disk_full_recovers_and_converges() {
  local disk="$WORK/$SCENARIO/disk"
  mkdir -p "$disk"
  if ! mount -t tmpfs -o size=48m tmpfs "$disk" 2>/dev/null; then
    log "skipped: cannot mount a tmpfs (needs root)"; return 0
  fi
  start n1 "$WORK/$SCENARIO/n1"
  ready n1
  KVS_RESERVE_BYTES=8388608 start n2 "$disk/n2" n1
  start n3 "$WORK/$SCENARIO/n3" n1
  ready n2 n3
  local before i
  before=$(post_todo n2 '{"todo":"before the disk filled","extern_id":"before-full"}' | json id)
  dd if=/dev/zero of="$disk/filler" bs=1M 2>/dev/null || true
  eventually 20 "n2 refuses writes with 507" write_refused n2
  eventually 10 "n2 not ready" not_ready n2
  expect_status 200 "$(url n2)/todos/$before"
  for i in $(seq 1 30); do post_todo n1 "{\"todo\":\"while n2 is full $i\"}" >/dev/null; done
  rm -f "$disk/filler"
  ready n2
  converged n1 n2 n3
  count_is n2 31
  stop_all
  umount -l "$disk"
}
write_refused() { [ "$(status_of -X PUT "$(url "$1")/kv/probe/$RANDOM" -H 'content-type: application/json' -d '{"pad":"'"$(head -c 2000 /dev/zero | tr '\0' x)"'"}')" = 507 ]; }
not_ready() { ! is_ready "$1"; }

fixture_matches() {
  local node=$1 base path etag body headers got_etag got_body code mismatches=0
  base=$(url "$node")
  while IFS=$'\t' read -r path etag body; do
    headers=$(mktemp); got_body=$(curl -s -D "$headers" "$base/kv/$path")
    code=$(sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' "$headers")
    got_etag=$(tr -d '\r' < "$headers" | sed -n 's/^etag: //Ip')
    rm -f "$headers"
    if [ "$etag" = "-" ]; then
      [ "$code" = 404 ] || { log "$node $path: expected deleted, got $code $got_etag"; mismatches=$((mismatches + 1)); }
    elif [ "$code" != 200 ] || [ "$got_etag" != "$etag" ] || [ "$got_body" != "$body" ]; then
      log "$node $path: expected $etag, got $code $got_etag"; mismatches=$((mismatches + 1))
    fi
  done < "$WORK/$SCENARIO/fixtures/expected.tsv"
  [ "$mismatches" = 0 ]
}

scenario_conflict_fixtures() {
  "$FIXTURES" --out "$WORK/$SCENARIO/fixtures" --nodes 3 --keys-per-case 40 --seed 42 >/dev/null
  local fx="$WORK/$SCENARIO/fixtures"
  PORTS[n1]=$(free_port); PORTS[n2]=$(free_port); PORTS[n3]=$(free_port)
  start n1 "$fx/node-1" n2 n3
  start n2 "$fx/node-2" n1 n3
  start n3 "$fx/node-3" n1 n2
  ready n1 n2 n3
  converged n1 n2 n3
  local n
  for n in n1 n2 n3; do fixture_matches "$n"; done
}

# The replication scenario on a cluster with TLS, mutual TLS between peers, a cluster
# key and client tokens; a request without a token is refused, one with it served.
scenario_replication_over_tls_with_tokens() {
  TLS_DIR="$WORK/$SCENARIO/certs"
  "$KVS" certs --out "$TLS_DIR" --names n1,n2,n3 >/dev/null 2>&1
  "$KVS" token keypair --private "$TLS_DIR/token-private.pem" --public "$TLS_DIR/token-public.pem" >/dev/null
  "$KVS" keygen > "$TLS_DIR/cluster.key" 2>/dev/null
  chmod 600 "$TLS_DIR/cluster.key"
  local token
  token=$("$KVS" token issue --key "$TLS_DIR/token-private.pem" --subject integration \
            --allow 'read:*' --allow 'write:*' --allow 'delete:*' --allow 'metrics:*' --ttl 1h 2>/dev/null)
  SCHEME=https
  CURL_EXTRA=(--cacert "$TLS_DIR/ca.pem" -H "Authorization: Bearer $token")
  scenario_replication
  CURL_EXTRA=(--cacert "$TLS_DIR/ca.pem")
  expect_status 401 "$(url n1)/todos"
  expect_status 401 "$(url n2)/todos" -H "Authorization: Bearer not-a-token"
  expect_status 200 "$(url n3)/health/ready"
}

lines_at_least() { [ "$(wc -l < "$1")" -ge "$2" ]; }
has_extern_id() { curl -sf "$(url "$1")/todos?extern_id=$2" | grep -q '"id"'; }

# A backup taken on n1 while writes go on, restored as n3 after n3's data is wiped:
# the restored n3 rejoins, the roots converge, and every acknowledged write is there.
scenario_backup_during_writes_restores_and_rejoins() {
  three_nodes
  local acked="$WORK/$SCENARIO/acked" n
  : > "$acked"
  # The writer records the extern_id of every create answered 201; its output goes
  # nowhere, and the scenario's exit kills it, so it can never hold the script.
  ( set +e; n=0
    while :; do
      n=$((n + 1))
      status_of -X POST "$(url n1)/todos" -H 'content-type: application/json' \
        -d "{\"todo\":\"during backup $n\",\"extern_id\":\"bk-$n\"}" | grep -q 201 \
        && echo "bk-$n" >> "$acked"
    done ) >/dev/null 2>&1 &
  WRITER=$!
  trap 'kill "$WRITER" 2>/dev/null || true; stop_all' EXIT
  eventually 60 "writes under way" lines_at_least "$acked" 20
  "$KVS" backup --url "$(url n1)" --out "$WORK/$SCENARIO/kvs.backup" >&2
  n=$(wc -l < "$acked")
  eventually 60 "writes after the backup" lines_at_least "$acked" $((n + 20))
  kill "$WRITER"; wait "$WRITER" 2>/dev/null || true
  kill9 n3
  rm -rf "$WORK/$SCENARIO/n3"
  "$KVS" restore "$WORK/$SCENARIO/kvs.backup" --data-dir "$WORK/$SCENARIO/n3" >&2
  start n3 "$WORK/$SCENARIO/n3" n1
  ready n3
  converged n1 n2 n3
  local missing=0 extern_id
  while read -r extern_id; do has_extern_id n3 "$extern_id" || missing=$((missing + 1)); done < "$acked"
  [ "$missing" = 0 ] || { log "$missing of $(wc -l < "$acked") acknowledged writes missing on the restored n3"; return 1; }
}

# deploy/kvs.service passes systemd's own checks (with ExecStart on the built binary).
scenario_deploy_unit_verifies() {
  if ! command -v systemd-analyze >/dev/null; then log "systemd-analyze is not installed"; return 1; fi
  local unit="$WORK/$SCENARIO/kvs.service"
  sed "s#/usr/local/bin/kvs#$KVS#" deploy/kvs.service > "$unit"
  local out
  out=$(systemd-analyze verify "$unit" 2>&1) || { log "$out"; return 1; }
  [ -z "$out" ] || { log "systemd-analyze warned: $out"; return 1; }
}

# A watcher (curl -N, as a user would) on n3 sees a create made on n1 and its delete,
# each as one event with an id; resuming from the first id gets the delete again.
scenario_watch_follows_changes_from_another_node() {
  three_nodes
  local out="$WORK/$SCENARIO/events" id
  curl -sN -D "$out.headers" "$(url n3)/todos?watch=true" > "$out" &
  WATCHER=$!
  echo "$WATCHER" >> "$STARTED"
  trap 'kill "$WATCHER" 2>/dev/null || true; stop_all' EXIT
  eventually 10 "the watch is open" grep -q '^HTTP/1.1 200' "$out.headers"
  id=$(post_todo n1 '{"todo":"watched from n3"}' | json id)
  eventually 30 "the create seen on n3" grep -q "watched from n3" "$out"
  curl -sf -X DELETE "$(url n1)/todos/$id" > /dev/null
  eventually 30 "the delete seen on n3" grep -q '^event: delete' "$out"
  local first
  first=$(grep -m1 '^id: ' "$out" | cut -d' ' -f2)
  curl -sN --max-time 3 -H "Last-Event-ID: $first" "$(url n3)/todos?watch=true" > "$out.resumed" || true
  grep -q '^event: delete' "$out.resumed" && ! grep -q '^event: put' "$out.resumed"
}

doc_status_is() { [ "$(status_of "$(url "$1")/kv/$2")" = "$3" ]; }
doc_gone_everywhere() { local n; for n in n1 n2 n3; do doc_status_is "$n" "$1" 404 || return 1; done; }

# A key written with ttl=2s on n1 reaches n2 and n3, is gone on all three about 2 s
# after the write, and explicit anti-entropy rounds from every node never bring it back
# (a key written without ttl beside it stays).
scenario_ttl_expires_on_every_node() {
  three_nodes
  local written=$SECONDS n round
  curl -sf -X PUT "$(url n1)/kv/session/ann?ttl=2s" -H 'content-type: application/json' -d '{"user":"ann"}' | grep -q '"expires_at":"20'
  curl -sf -X PUT "$(url n1)/kv/keep" -H 'content-type: application/json' -d '1' > /dev/null
  for n in n2 n3; do eventually 10 "the key on $n" doc_status_is "$n" session/ann 200; done
  eventually 10 "the key gone on every node" doc_gone_everywhere session/ann
  log "gone on all three $((SECONDS - written)) s after the write (ttl 2s)"
  converged n1 n2 n3
  for round in 1 2 3; do
    for n in n1 n2 n3; do curl -sf -X POST "$(url "$n")/admin/v1/sync" > /dev/null; done
    doc_gone_everywhere session/ann || { log "session/ann came back in round $round"; return 1; }
    for n in n1 n2 n3; do doc_status_is "$n" keep 200; done
  done
  converged n1 n2 n3
}

# netns_down FILE: deletes the namespaces (with their /etc/netns files) and the bridge
# that FILE lists, one "ns NAME" or "link NAME" per line.
netns_down() {
  local kind name
  while read -r kind name; do
    case $kind in
      ns) ip netns del "$name" 2>/dev/null || true; rm -rf "/etc/netns/$name" ;;
      link) ip link del "$name" 2>/dev/null || true ;;
    esac
  done < "$1"
  rm -f "$1"
}

ns_ready() { [ "$(status_of "$1/health/ready")" = 200 ]; }
# ns_members_are BASE STATES: the member states BASE reports, sorted by name, joined by ','.
ns_members_are() {
  [ "$(curl -sf "$1/health/info" | python3 -c 'import json,sys; print(",".join(m["state"] for m in sorted(json.load(sys.stdin)["members"], key=lambda m: m["name"])))')" = "$2" ]
}
ns_roots_equal() {
  local first="" base root
  for base in "$@"; do
    root=$(curl -sf "$base/health/info" | json merkle_root) || return 1
    if [ -z "$first" ]; then first=$root; elif [ "$root" != "$first" ]; then return 1; fi
  done
}

# The path a Kubernetes StatefulSet takes (deploy/kubernetes/kvs.yaml): three nodes, each
# in its own network namespace with its own IP on a bridge, bind 0.0.0.0:8080, are
# configured only through the manifest's KVS_* variables, and find each other through
# seed *names* that the namespace's hosts file (/etc/netns/NS/hosts) resolves. kvs-1 and
# kvs-2 advertise their names as the StatefulSet does; kvs-3 advertises its IP.
scenario_network_namespaces_find_peers_by_name() {
  if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    log "needs root and iproute2 (ip) to make network namespaces"; return 1
  fi
  local tag=$$ net="10.$((100 + $$ % 100)).$(( ($$ / 100) % 250 ))" list="$WORK/netns"
  local bridge="kvsbr$tag" i ns
  local -a base=()
  "$KVS" keygen > "$WORK/$SCENARIO/cluster.key" 2>/dev/null
  chmod 600 "$WORK/$SCENARIO/cluster.key"
  trap 'stop_all; netns_down "$WORK/netns"' EXIT
  ip link add "$bridge" type bridge
  echo "link $bridge" >> "$list"
  ip addr add "$net.254/24" dev "$bridge"
  ip link set "$bridge" up
  for i in 1 2 3; do
    ns="kvs$tag-$i"
    ip netns add "$ns"
    echo "ns $ns" >> "$list"
    ip link add "kvsv$tag-$i" type veth peer name eth0 netns "$ns"
    ip link set "kvsv$tag-$i" master "$bridge" up
    ip -n "$ns" addr add "$net.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s kvs-1\n%s kvs-2\n%s kvs-3\n' "$net.1" "$net.2" "$net.3" > "/etc/netns/$ns/hosts"
    base[$i]="http://$net.$i:8080"
  done
  start_in_ns() {
    local i=$1 advertise="kvs-$1:8080"
    [ "$i" = 3 ] && advertise="$net.3:8080"
    KVS_NODE_NAME="kvs-$i" KVS_LISTEN=0.0.0.0:8080 KVS_ADVERTISE="$advertise" \
    KVS_SEEDS=kvs-1:8080,kvs-2:8080,kvs-3:8080 KVS_CLUSTER_KEY_FILE="$WORK/$SCENARIO/cluster.key" \
    KVS_DATA_DIR="$WORK/$SCENARIO/kvs-$i" KVS_GOSSIP_INTERVAL=100ms KVS_SYNC_INTERVAL=200ms \
      ip netns exec "kvs$tag-$i" "$KVS" serve > >(sed -u "s/^/[kvs-$i] /" >> "$WORK/$SCENARIO.log") 2>&1 &
    PIDS[kvs-$i]=$!
    echo "$!" >> "$STARTED"
  }
  for i in 1 2 3; do start_in_ns "$i"; done
  for i in 1 2 3; do eventually 30 "kvs-$i ready" ns_ready "${base[$i]}"; done
  for i in 1 2 3; do eventually 30 "kvs-$i sees three alive" ns_members_are "${base[$i]}" alive,alive,alive; done
  curl -sf "${base[1]}/health/info" | grep -q '"addr":"kvs-2:8080"'
  curl -sf "${base[1]}/health/info" | grep -q "\"addr\":\"$net.3:8080\""
  curl -sf -X POST "${base[1]}/todos" -H 'content-type: application/json' \
    -d '{"todo":"across namespaces","extern_id":"ns-1"}' > /dev/null
  eventually 30 "the write on kvs-3" has_extern_id_at "${base[3]}" ns-1
  ns_roots_equal "${base[@]}"
  kill9 kvs-2
  eventually 30 "kvs-1 sees kvs-2 dead" ns_members_are "${base[1]}" alive,dead,alive
  curl -sf -X POST "${base[3]}/todos" -H 'content-type: application/json' \
    -d '{"todo":"while kvs-2 was down","extern_id":"ns-2"}' > /dev/null
  start_in_ns 2
  eventually 30 "kvs-2 ready again" ns_ready "${base[2]}"
  eventually 30 "kvs-1 sees kvs-2 alive again" ns_members_are "${base[1]}" alive,alive,alive
  eventually 60 "equal roots across the namespaces" ns_roots_equal "${base[@]}"
  has_extern_id_at "${base[2]}" ns-2
}
has_extern_id_at() { curl -sf "$1/todos?extern_id=$2" | grep -q '"id"'; }

# ---------------------------------------------------------------- runner

run() {
  SCENARIO=$1
  local started=$SECONDS status
  mkdir -p "$WORK/$SCENARIO"
  set +e
  # A subshell per scenario: `set -e` ends it at the first failing step, and its EXIT
  # trap stops the nodes it started (their pids live in the subshell).
  ( set -e; trap stop_all EXIT; "scenario_$SCENARIO" )
  status=$?
  set -e
  PORTS=()
  if [ "$status" = 0 ]; then
    PASSED=$((PASSED + 1)); printf 'pass  %-40s %3ds\n' "$SCENARIO" $((SECONDS - started))
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$SCENARIO")
    printf 'FAIL  %-40s %3ds\n' "$SCENARIO" $((SECONDS - started))
    echo "---- logs of $SCENARIO ----"; tail -n 60 "$WORK/$SCENARIO.log" 2>/dev/null || true; echo "----"
  fi
}

SCENARIOS=(crud_on_every_node replication late_joiner_bootstraps kill9_and_restart_catches_up
           delete_while_down_stays_deleted concurrent_updates_converge conflict_fixtures
           disk_full_recovers_and_converges replication_over_tls_with_tokens deploy_unit_verifies
           backup_during_writes_restores_and_rejoins network_namespaces_find_peers_by_name
           watch_follows_changes_from_another_node ttl_expires_on_every_node)
if [ $# -gt 0 ]; then SCENARIOS=("$@"); fi
for s in "${SCENARIOS[@]}"; do run "$s"; done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
