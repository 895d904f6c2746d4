#!/usr/bin/env bash
# Benchmark: listing a store of N (default 500) images as JSON.
#   cstorage images --format json   vs   podman images --format json   vs   containers-storage images
# Builds the store once with skopeo (kept in $BENCH_DIR/images-N), then times all tools in
# the same run with hyperfine and prints the ratios. Not a test.
source "$(dirname "$0")/common.sh"
N=${N:-500}
D=$BENCH_DIR/images-$N
ROOT=$D/root; RUN=$D/run
OPT=overlay.skip_mount_home=true
if [ ! -f "$D/.done" ]; then
    rm -rf "$D"; mkdir -p "$D/tree/etc" "$D/tree/usr/share/doc"
    cp -r /usr/share/doc/bash /usr/share/doc/tar "$D/tree/usr/share/doc/"
    cp /etc/os-release "$D/tree/etc/"
    echo "creating $N images in $ROOT (one-time)" >&2
    for i in $(seq 1 "$N"); do
        mkdir -p "$D/own/$i/app"; echo "image $i" > "$D/own/$i/app/id"
        scripts/mkoci.py "$D/layout" "img$i" --label n="$i" "$D/tree" "$D/own/$i" >/dev/null
    done
    seq 1 "$N" | xargs -P 2 -I{} skopeo copy -q "oci:$D/layout:img{}" \
        "containers-storage:[overlay@$ROOT+$RUN:$OPT]localhost/bench/img{}:latest"
    touch "$D/.done"
fi
machine_info
echo "store: $N images, $("$CST" --root "$ROOT" --runroot "$RUN" --storage-opt $OPT layers -q | wc -l) layers"
# Every tool must see all images.
test "$("$CST" --root "$ROOT" --runroot "$RUN" --storage-opt $OPT images -q | wc -l)" -eq "$N"
PODMAN="podman --root $ROOT --runroot $RUN --storage-driver overlay --storage-opt $OPT --cgroup-manager=cgroupfs --events-backend=none"
CS="containers-storage -s overlay -g $ROOT -R $RUN --storage-opt $OPT"
test "$($PODMAN images -q --no-trunc | sort -u | wc -l)" -eq "$N"
hyperfine -N --warmup 3 --min-runs 20 --export-json "$D/hyperfine.json" \
    "$CST --root $ROOT --runroot $RUN --storage-opt $OPT images --format json" \
    "$PODMAN images --format json" \
    "$CS images" \
    "$CS images -j" >/dev/null
echo "cstorage images --format json vs the Go tools (ratio = time / cstorage time):"
ratios "$D/hyperfine.json"
