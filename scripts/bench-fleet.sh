#!/usr/bin/env bash
# Fleet rollout figures (docs/benchmarks.md): time from `suture repo add` to every simulated
# host patched (N hosts = N agents with their own state directories and running targets, the
# repository served over HTTP on loopback by python3's http.server), and the agent's CPU time
# and peak memory for an idle pass (nothing to do) over every process of the machine.
# Usage: scripts/bench-fleet.sh SUTURE_BINARY FIXTURE_DIR [HOSTS]
#   FIXTURE_DIR holds src/prog and out-fix/prog.suture, as crates/suture/tests/fleet.rs builds them
#   (target/tmp/fleet/fixture-<pid>).
set -euo pipefail
suture=$1 fixture=$2 hosts=${3:-4}
w=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$w"
}
trap cleanup EXIT
ms() { date +%s%3N; }

"$suture" repo init "$w/repo" --keys "$w/keys" >/dev/null
python3 -m http.server 0 --bind 127.0.0.1 --directory "$w/repo" >"$w/http.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "port" "$w/http.log" && break; sleep 0.1; done
port=$(grep -o 'port [0-9]*' "$w/http.log" | head -1 | cut -d' ' -f2)
url=http://127.0.0.1:$port/
targets=()
for i in $(seq "$hosts"); do
    "$fixture/src/prog" >/dev/null &
    pids+=($!)
    targets+=($!)
done

t0=$(ms)
"$suture" repo add "$w/repo" "$fixture/out-fix/prog.suture" --keys "$w/keys" >/dev/null
t1=$(ms)
for i in $(seq "$hosts"); do
    "$suture" agent --repo "$url" --trust "$w/repo/metadata/1.root.json" --state "$w/host$i" \
        --pid "${targets[$((i - 1))]}" --health-settle 0 --once --json >"$w/pass$i.json"
done
t2=$(ms)
applied=$(grep -c '"stop_window_us"' "$w"/pass*.json | awk -F: '{s+=$2} END {print s}')
echo "hosts=$hosts applied=$applied repo_add_ms=$((t1 - t0)) add_to_all_patched_ms=$((t2 - t0)) (agents one after another)"

# Idle pass: the patch is live everywhere; the agent verifies the repository and scans every
# process of the machine.
nproc_seen=$(ls -d /proc/[0-9]* | wc -l)
/usr/bin/time -f "idle_pass wall_s=%e user_s=%U sys_s=%S max_rss_kb=%M processes=$nproc_seen" \
    "$suture" agent --repo "$url" --trust "$w/repo/metadata/1.root.json" --state "$w/host1" \
    --once >/dev/null
