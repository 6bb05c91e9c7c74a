#!/bin/bash
# `npm run bench:memory` (root): idle RSS and PSS of one agent (10 local workloads, embedded CA) run
# three ways, three starts each: type stripping at every start, the compile cache warm (src/main.js),
# and that with the young generation the image uses; then the image's way with 1, 2 and 4 data-plane
# workers (what each extra thread costs), all serving from the start. Numbers in bench/README.md, "Agent memory".
set -euo pipefail
cd "$(dirname "$0")/.."
NODE=$PWD/node_modules/.bin/node
D=$(mktemp -d /tmp/meshlet-memory-XXXXXX)
NS=meshlet-memory-$$
trap 'ip netns del $NS 2>/dev/null || true; rm -rf "$D"' EXIT
$NODE src/cli.ts ca init --out $D/ca --trust-domain mem.test >/dev/null 2>&1
{ echo "trustDomain: mem.test"; echo "nodes: [{ name: n1, ip: 10.9.0.1 }]"; echo "workloads:"; for i in $(seq 1 10); do echo "  - { name: w$i, namespace: m, serviceAccount: w$i, ip: 10.9.1.$i, node: n1 }"; done; } > $D/w.yaml
ip netns add $NS
ip netns exec $NS ip link set lo up
run() {
  local label=$1; shift
  for i in 1 2 3; do
    ip netns exec $NS "$@" agent --node n1 --workloads $D/w.yaml --ca-dir $D/ca --log-level warn ${EXTRA:-} > /dev/null 2>&1 &
    local pid=$!
    sleep 6
    local rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    local pss=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup)
    echo "$label run $i: RSS $((rss/1024)) MiB, PSS $((pss/1024)) MiB"
    kill $pid; wait $pid 2>/dev/null || true
  done
}
run "type stripping, no cache (node src/cli.ts)" $NODE src/cli.ts
NODE_COMPILE_CACHE=$D/cc $NODE src/main.js --help > /dev/null
run "compile cache warm (node src/main.js)" env NODE_COMPILE_CACHE=$D/cc $NODE src/main.js
run "compile cache + 1 MiB semi-spaces (bin/meshlet)" env NODE_COMPILE_CACHE=$D/cc $NODE --max-semi-space-size=1 src/main.js
for w in 2 4; do
  EXTRA="--workers $w --min-workers $w" run "bin/meshlet --workers $w --min-workers $w" env NODE_COMPILE_CACHE=$D/cc $NODE --max-semi-space-size=1 src/main.js
done
