# Shared helpers for the benchmark scripts (sourced).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -q -p cstorage
CST=$PWD/target/release/cstorage
BENCH_DIR=${BENCH_DIR:-/var/tmp/cstorage-bench}
mkdir -p "$BENCH_DIR"
# One benchmark at a time per BENCH_DIR: they share stores (image-1g) that a run may rebuild.
exec 9>"$BENCH_DIR/.lock"
flock 9

machine_info() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r)"
    echo "tools: $(skopeo --version), $(podman --version), containers-storage $(dpkg-query -W -f='${Version}' containers-storage), tar-split $(dpkg-query -W -f='${Version}' tar-split)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), cstorage $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
}

# ratio JSON_FILE: prints each command's mean and its ratio to the first command.
ratios() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
base = r[0]["mean"]
for x in r:
    print(f"  {x['mean']*1000:10.2f} ms ± {x['stddev']*1000:7.2f}   {x['mean']/base:7.2f}x   {x['command']}")
PY
}
