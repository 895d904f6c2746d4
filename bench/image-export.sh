#!/usr/bin/env bash
# Benchmark: exporting a 3-layer, 1.3 GB image from the store.
#   cstorage image export (oci, uncompressed and gzip; docker-archive)
#   vs  skopeo copy containers-storage:... oci:...  (uncompressed and gzip)  vs  podman save
#   (to a file and to a pipe).
# Builds the store once with skopeo (kept in $BENCH_DIR/image-1g). Not a test.
source "$(dirname "$0")/common.sh"
D=$BENCH_DIR/image-1g
ROOT=$D/root; RUN=$D/run; OPT=overlay.skip_mount_home=true
SPEC="containers-storage:[overlay@$ROOT+$RUN:$OPT]"
if [ ! -f "$D/.done" ]; then
    rm -rf "$D"; mkdir -p "$D/l1/usr" "$D/l2/usr/lib" "$D/l3/app"
    cp -a /usr/share "$D/l1/usr/"
    cp -a /usr/lib/x86_64-linux-gnu "$D/l2/usr/lib/" 2>/dev/null || cp -a /usr/lib/$(uname -m)-linux-gnu "$D/l2/usr/lib/"
    echo "app" > "$D/l3/app/run"
    echo "building the layout and the store (one-time)" >&2
    scripts/mkoci.py --plain "$D/layout" big "$D/l1" "$D/l2" "$D/l3" >/dev/null
    skopeo copy -q "oci:$D/layout:big" "${SPEC}localhost/big:latest"
    rm -rf "$D/l1" "$D/l2" "$D/l3" "$D/layout"
    touch "$D/.done"
fi
CSTA="$CST --root $ROOT --runroot $RUN --storage-opt $OPT"
PODMAN="podman --root $ROOT --runroot $RUN --storage-driver overlay --storage-opt $OPT --cgroup-manager=cgroupfs --events-backend=none"
OUT=$D/out
machine_info
echo "image: localhost/big:latest, $($CSTA images --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["size"])') bytes, 3 layers"
hyperfine --warmup 1 --runs ${RUNS:-3} --export-json "$D/none.json" --prepare "rm -rf $OUT" \
    "$CSTA image export localhost/big:latest -o $OUT" \
    "skopeo copy -q --dest-oci-accept-uncompressed-layers ${SPEC}localhost/big:latest oci:$OUT:big" >/dev/null
echo "== OCI layout, uncompressed (ratio = time / cstorage)"
ratios "$D/none.json"
hyperfine --warmup 0 --runs ${RUNS:-3} --export-json "$D/gzip.json" --prepare "rm -rf $OUT" \
    "$CSTA image export localhost/big:latest --compress gzip -o $OUT" \
    "skopeo copy -q --dest-compress-format gzip ${SPEC}localhost/big:latest oci:$OUT:big" >/dev/null
echo "== OCI layout, gzip (ratio = time / cstorage)"
ratios "$D/gzip.json"
hyperfine --warmup 0 --runs ${RUNS:-3} --export-json "$D/docker.json" --prepare "rm -rf $OUT" \
    "$CSTA image export localhost/big:latest --format docker-archive -o $OUT" \
    "$PODMAN save -q -o $OUT localhost/big:latest" >/dev/null
echo "== docker-archive (ratio = time / cstorage)"
ratios "$D/docker.json"
# Streamed to a pipe (issue 16): the uncompressed docker-archive goes out in one pass, no
# temporary file; podman save writes to /dev/stdout.
hyperfine --warmup 1 --runs ${RUNS:-3} --export-json "$D/stream.json" \
    "$CSTA image export localhost/big:latest --format docker-archive -o - | cat >/dev/null" \
    "$PODMAN save -q -o /dev/stdout localhost/big:latest | cat >/dev/null" >/dev/null
echo "== docker-archive to a pipe (ratio = time / cstorage)"
ratios "$D/stream.json"
ls -la "$OUT" >/dev/null 2>&1 && rm -rf "$OUT"
