#!/usr/bin/env bash
# Benchmark: checking a store's layers against their tar-split.
#   cstorage verify --metadata --all   (sha256 of every layer rebuilt from tar-split, and
#                                       every file's metadata against its tar header)
#   cstorage verify --all              (the digests only)
#   podman system check                (podman 5.4 in the Debian 13 chroot: digests, and the
#                                       mounted tree against the headers)
# on the 1.3 GB one-layer store of bench/layer-export.sh (built here if missing), copied with
# hard links into the chroot's work directory. Not a test.
source "$(dirname "$0")/common.sh"
use_layer_1g
# podman 5 runs in the chroot, which sees only its work directory: check a copy of the store
# there (a full copy: podman writes its own files, and locks, into the graph root; made
# again when the source store is rebuilt).
TRIXIE=$PWD/tests/trixie/trixie-env.sh
W=${CSTORAGE_TRIXIE_CACHE:-/var/cache/cstorage-trixie}/work/bench-layer-1g
if [ ! -f "$W/.done" ] || [ "$D/.done" -nt "$W/.done" ]; then
    rm -rf "$W"; mkdir -p "$W"
    cp -a "$ROOT" "$W/root"
    # podman's database names the graph root it was made for
    rm -rf "$W/root/libpod" "$W/root/db.sql"
    touch "$W/.done"
fi
ROOT=$W/root; RUN=$W/run
cat >"$W/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$ROOT"
runroot = "$RUN"

[storage.options.overlay]
skip_mount_home = "true"
EOF
export CONTAINERS_STORAGE_CONF=$W/storage.conf
L=$($CST layers -q | head -n1)
SIZE=$($CST --format json layer inspect "$L" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["diff_size"])')
machine_info
echo "podman in the chroot: $("$TRIXIE" run podman --version)"
echo "store: 1 image, layer $L, $SIZE bytes"
# Correctness first: both find the store intact (podman may list its false positives; see
# docs/format-findings.md), and ours compared the layer.
v=$($CST verify --metadata --all); grep -q 'metadata .*no differences' <<<"$v"
test "$("$TRIXIE" run podman images -q | wc -l)" = 1   # podman sees the store
# podman must have checked the layer (not failed to find the store): its report names the
# layer or says nothing.
out=$("$TRIXIE" run env PODMAN_IGNORE_CGROUPSV1_WARNING=1 podman system check 2>&1) || true
echo "podman system check says: ${out:-nothing (no damage)}"
if [ -n "$out" ] && ! grep -q "$L" <<<"$out"; then echo "podman system check failed" >&2; exit 1; fi
echo
echo "== ${RUNS:-3} runs each after a warm-up (ratio = time / cstorage verify --metadata --all)"
hyperfine --warmup 1 --runs "${RUNS:-3}" -i --export-json "$D/verify.json" \
    "$CST verify --metadata --all" \
    "$CST verify --all" \
    "$TRIXIE run env PODMAN_IGNORE_CGROUPSV1_WARNING=1 podman system check" \
    "$TRIXIE run env PODMAN_IGNORE_CGROUPSV1_WARNING=1 podman system check --quick" >/dev/null
ratios "$D/verify.json"
