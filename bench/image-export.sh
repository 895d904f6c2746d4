#!/usr/bin/env bash
# Benchmark: exporting a 3-layer, 1.3 GB image from the store.
#   cstorage image export (oci, uncompressed and gzip; docker-archive)
#   vs  skopeo copy containers-storage:... oci:...  (uncompressed and gzip)  vs  podman save
#   (to a file and to a pipe).
# Builds the store once with skopeo (kept in $BENCH_DIR/image-1g). Not a test.
source "$(dirname "$0")/common.sh"
use_image_1g
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
# temporary file; podman save writes to /dev/stdout. By default the streamed layers are
# CRC-checked (the receiver checks their sha256); --stream-verify digest also computes it.
hyperfine --warmup 1 --runs ${RUNS:-3} --export-json "$D/stream.json" \
    "$CSTA image export localhost/big:latest --format docker-archive -o - | cat >/dev/null" \
    "$PODMAN save -q -o /dev/stdout localhost/big:latest | cat >/dev/null" \
    "$CSTA image export localhost/big:latest --format docker-archive --stream-verify digest -o - | cat >/dev/null" >/dev/null
echo "== docker-archive to a pipe (ratio = time / cstorage)"
ratios "$D/stream.json"
ls -la "$OUT" >/dev/null 2>&1 && rm -rf "$OUT"
