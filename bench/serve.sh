#!/usr/bin/env bash
# Benchmark: `cstorage serve` against Debian's docker-registry (distribution 2.8) serving the
# same uncompressed 3-layer, 1.3 GB image (the store of bench/image-export.sh), on loopback.
#   1. skopeo pulls the image into dir: from each (ratio = time / cstorage serve), and from
#      cstorage serve --verify digest
#   2. end to end into a new store: serve + skopeo copy docker://... containers-storage:
#      vs skopeo copy oci:LAYOUT containers-storage: (a layout on disk), the registry route,
#      and podman save | podman load; the first two again with skopeo's temporary files on
#      a tmpfs
#   3. time to the first byte of the largest layer blob (median of 10)
#   4. peak RSS of each server while 8 clients pull the largest layer
#   5. stress: $STRESS (default 32) concurrent pulls of every layer with sha256 checks, one
#      client killed mid-blob; the server must still answer afterwards
# Every server listens on 127.0.0.1 and is stopped at exit; every loop is bounded. Not a test.
source "$(dirname "$0")/common.sh"
use_image_1g
S=$BENCH_DIR/serve
rm -rf "$S"; mkdir -p "$S"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$S/out" "$S/dst"
    [ -z "${TMPD:-}" ] || rm -rf "$TMPD"
}
trap cleanup EXIT

# cstorage serve on a port the kernel picks.
$CSTA --log-level warn serve --listen 127.0.0.1:0 >"$S/serve.out" 2>"$S/serve.log" &
SRV_PID=$!; PIDS+=("$SRV_PID")
for _ in $(seq 100); do grep -q listening "$S/serve.out" && break; sleep 0.1; done
CADDR=$(sed -n 's|^listening on http://||p' "$S/serve.out" | head -1)
[ -n "$CADDR" ] || { cat "$S/serve.log" >&2; echo "cstorage serve did not start" >&2; exit 1; }
# A second one checking each blob's sha256 too.
$CSTA --log-level warn serve --verify digest --listen 127.0.0.1:0 >"$S/serve2.out" 2>"$S/serve2.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$S/serve2.out" && break; sleep 0.1; done
DADDR=$(sed -n 's|^listening on http://||p' "$S/serve2.out" | head -1)
[ -n "$DADDR" ] || { cat "$S/serve2.log" >&2; echo "cstorage serve --verify digest did not start" >&2; exit 1; }

# docker-registry with the same image, uncompressed: the layout `image export` writes, pushed
# blob by blob as it is (skopeo would gzip layers on the way to a registry).
REG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$S/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $S/registry
http:
  addr: 127.0.0.1:$REG_PORT
EOF
docker-registry serve "$S/registry.yml" >"$S/registry.log" 2>&1 &
REG_PID=$!; PIDS+=("$REG_PID")
RADDR=127.0.0.1:$REG_PORT
for _ in $(seq 100); do curl -sf "http://$RADDR/v2/" >/dev/null && break; sleep 0.1; done
LAYOUT=$S/layout
$CSTA image export localhost/big:latest -o "$LAYOUT"
MDIGEST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$LAYOUT/index.json")
MFILE=$LAYOUT/blobs/sha256/${MDIGEST#sha256:}
for d in $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["config"]["digest"]); [print(l["digest"]) for l in m["layers"]]' "$MFILE"); do
    # An upload session, then the whole blob in one PUT (streamed from the file).
    loc=$(curl -s -D - -o /dev/null -X POST "http://$RADDR/v2/localhost/big/blobs/uploads/" |
        sed -n 's/^[Ll]ocation: *//p' | tr -d '\r')
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/octet-stream' \
        -T "$LAYOUT/blobs/sha256/${d#sha256:}" "$loc${sep}digest=$d")
    [ "$code" = 201 ] || { echo "pushing $d to docker-registry: HTTP $code" >&2; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$MFILE" "http://$RADDR/v2/localhost/big/manifests/latest")
[ "$code" = 201 ] || { echo "pushing the manifest to docker-registry: HTTP $code" >&2; exit 1; }
# Both serve the same manifest.
[ "$(curl -s "http://$CADDR/v2/localhost/big/manifests/latest" | sha256sum | cut -d' ' -f1)" = "${MDIGEST#sha256:}" ]
[ "$(curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$RADDR/v2/localhost/big/manifests/latest" | sha256sum | cut -d' ' -f1)" = "${MDIGEST#sha256:}" ]
BIG=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(max(m["layers"], key=lambda l: l["size"])["digest"])' "$MFILE")
LAYERS=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); [print(l["digest"]) for l in m["layers"]]' "$MFILE")

machine_info
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tools: docker-registry $(dpkg-query -W -f='${Version}' docker-registry), curl $(curl --version | head -1 | cut -d' ' -f2)"
echo "image: localhost/big:latest, manifest $MDIGEST, largest layer $BIG ($(stat -c %s "$LAYOUT/blobs/sha256/${BIG#sha256:}") bytes)"

OUT=$S/out
hyperfine --warmup 1 --runs "${RUNS:-3}" --export-json "$S/pull.json" --prepare "rm -rf $OUT" \
    "skopeo copy -q --src-tls-verify=false docker://$CADDR/localhost/big:latest dir:$OUT" \
    "skopeo copy -q --src-tls-verify=false docker://$RADDR/localhost/big:latest dir:$OUT" \
    "skopeo copy -q --src-tls-verify=false docker://$DADDR/localhost/big:latest dir:$OUT" >/dev/null
echo "== 1. skopeo pull into dir: (ratio = time / cstorage serve; 2nd = docker-registry, 3rd = cstorage serve --verify digest)"
ratios "$S/pull.json"

DST=$S/dst
DSPEC="containers-storage:[overlay@$DST/root+$DST/run:$OPT]"
DPODMAN="podman --root $DST/root --runroot $DST/run --storage-driver overlay --storage-opt $OPT --cgroup-manager=cgroupfs --events-backend=none"
# skopeo keeps each layer in a temporary file (in /var/tmp) until it is applied; rows 5 and
# 6 put those files on a tmpfs (--tmpdir), which takes their write-back out of the picture.
TMPD=$(mktemp -d /dev/shm/cstorage-bench-serve.XXXXXX)
hyperfine --warmup 0 --runs "${RUNS_E2E:-2}" --export-json "$S/e2e.json" --prepare "rm -rf $DST $TMPD/*" \
    "skopeo copy -q oci:$LAYOUT:localhost/big:latest ${DSPEC}localhost/big:latest" \
    "skopeo copy -q --src-tls-verify=false docker://$CADDR/localhost/big:latest ${DSPEC}localhost/big:latest" \
    "skopeo copy -q --src-tls-verify=false docker://$RADDR/localhost/big:latest ${DSPEC}localhost/big:latest" \
    "$PODMAN save localhost/big:latest | $DPODMAN load -q" \
    "skopeo --tmpdir $TMPD copy -q oci:$LAYOUT:localhost/big:latest ${DSPEC}localhost/big:latest" \
    "skopeo --tmpdir $TMPD copy -q --src-tls-verify=false docker://$CADDR/localhost/big:latest ${DSPEC}localhost/big:latest" >/dev/null
echo "== 2. end to end into a new store (ratio = time / skopeo copy from an OCI layout on disk; the last two with skopeo's temporary files on tmpfs)"
ratios "$S/e2e.json"
rm -rf "$DST" "$TMPD"

ttfb() {
    for _ in $(seq 10); do
        curl -s -o /dev/null -w '%{time_starttransfer}\n' "$1"
    done | sort -n | sed -n 5p
}
echo "== 3. time to the first byte of the largest layer blob (median of 10)"
echo "  cstorage serve:  $(ttfb "http://$CADDR/v2/localhost/big/blobs/$BIG") s"
echo "  docker-registry: $(ttfb "http://$RADDR/v2/localhost/big/blobs/$BIG") s"

peak_rss() { # PID URL: peak RSS (KiB) of PID while 8 clients download URL
    echo 5 >"/proc/$1/clear_refs"
    local ps=()
    for _ in $(seq 8); do curl -s -o /dev/null --max-time 300 "$2" & ps+=($!); done
    for p in "${ps[@]}"; do wait "$p"; done
    awk '/VmHWM/ {print $2}' "/proc/$1/status"
}
echo "== 4. peak RSS while 8 clients pull the largest layer"
echo "  cstorage serve:  $(( $(peak_rss "$SRV_PID" "http://$CADDR/v2/localhost/big/blobs/$BIG") / 1024 )) MiB"
echo "  docker-registry: $(( $(peak_rss "$REG_PID" "http://$RADDR/v2/localhost/big/blobs/$BIG") / 1024 )) MiB"

N=${STRESS:-32}
echo "== 5. $N concurrent pulls of every layer from cstorage serve, sha256 checked; one client killed mid-blob"
mkdir -p "$S/stress"
t0=$(date +%s.%N)
ps=()
for i in $(seq "$N"); do
    (
        for d in $LAYERS; do
            got=$(curl -s --max-time 900 "http://$CADDR/v2/localhost/big/blobs/$d" | sha256sum | cut -d' ' -f1)
            [ "sha256:$got" = "$d" ] || { echo "client $i: $d came out as sha256:$got"; exit 1; }
        done
    ) >"$S/stress/$i" 2>&1 &
    ps+=($!)
done
# One more client that leaves after 1 s, in the middle of the largest blob.
curl -s -o /dev/null --max-time 1 --limit-rate 10M "http://$CADDR/v2/localhost/big/blobs/$BIG" || true
bad=0
for p in "${ps[@]}"; do wait "$p" || bad=$((bad + 1)); done
t1=$(date +%s.%N)
cat "$S"/stress/* 2>/dev/null | head -5
echo "  $N clients, $bad failed, $(python3 -c "print(f'{$t1-$t0:.1f}')") s; server still answers: $(curl -s -o /dev/null -w '%{http_code}' "http://$CADDR/v2/")"
[ "$bad" = 0 ]
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
