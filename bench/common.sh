# Shared helpers for the benchmark scripts (sourced).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -q -p cstorage
# CST=/path/to/cstorage runs another build (e.g. an older commit's, for before/after ratios).
CST=${CST:-$PWD/target/release/cstorage}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cstorage-bench}
mkdir -p "$BENCH_DIR"
# One benchmark at a time per BENCH_DIR: they share stores (image-1g) that a run may rebuild.
exec 9>"$BENCH_DIR/.lock"
flock 9

machine_info() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r)"
    echo "tools: $(skopeo --version), $(podman --version), containers-storage $(dpkg-query -W -f='${Version}' containers-storage), tar-split $(dpkg-query -W -f='${Version}' tar-split)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), $($CST --version)"
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

# The stores the benchmarks share, built once with skopeo from real files copied from /usr
# (kept in $BENCH_DIR; a run that finds no `.done` marker rebuilds it). Each sets D (the
# store's directory), ROOT, RUN, OPT, SPEC (skopeo's store spec) and CSTA (cstorage on it).
store_vars() {
    D=$1
    ROOT=$D/root; RUN=$D/run; OPT=overlay.skip_mount_home=true
    SPEC="containers-storage:[overlay@$ROOT+$RUN:$OPT]"
    CSTA="$CST --root $ROOT --runroot $RUN --storage-opt $OPT"
    PODMAN="podman --root $ROOT --runroot $RUN --storage-driver overlay --storage-opt $OPT --cgroup-manager=cgroupfs --events-backend=none"
}

copy_usr_lib() {
    cp -a /usr/lib/x86_64-linux-gnu "$1/" 2>/dev/null || cp -a /usr/lib/$(uname -m)-linux-gnu "$1/"
}

# image-1g: localhost/big:latest, 3 layers (/usr/share, /usr/lib/<arch>-linux-gnu, one file).
use_image_1g() {
    store_vars "$BENCH_DIR/image-1g"
    if [ ! -f "$D/.done" ]; then
        rm -rf "$D"; mkdir -p "$D/l1/usr" "$D/l2/usr/lib" "$D/l3/app"
        cp -a /usr/share "$D/l1/usr/"
        copy_usr_lib "$D/l2/usr/lib"
        echo "app" > "$D/l3/app/run"
        echo "building the layout and the store (one-time)" >&2
        scripts/mkoci.py --plain "$D/layout" big "$D/l1" "$D/l2" "$D/l3" >/dev/null
        skopeo copy -q "oci:$D/layout:big" "${SPEC}localhost/big:latest"
        rm -rf "$D/l1" "$D/l2" "$D/l3" "$D/layout"
        touch "$D/.done"
    fi
}

# layer-1g: localhost/big:latest, one layer of /usr/share and /usr/lib/<arch>-linux-gnu.
use_layer_1g() {
    store_vars "$BENCH_DIR/layer-1g"
    if [ ! -f "$D/.done" ]; then
        rm -rf "$D"; mkdir -p "$D/tree/usr/lib"
        cp -a /usr/share "$D/tree/usr/"
        copy_usr_lib "$D/tree/usr/lib"
        echo "building the layout and the store (one-time)" >&2
        scripts/mkoci.py --plain "$D/layout" big "$D/tree" >/dev/null
        skopeo copy -q "oci:$D/layout:big" "${SPEC}localhost/big:latest"
        rm -rf "$D/tree" "$D/layout"
        touch "$D/.done"
    fi
}
