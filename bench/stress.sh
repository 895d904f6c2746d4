#!/usr/bin/env bash
# Stress (not a test): exporters against real writers on one store, for DURATION seconds
# (default 120). Two reader loops export every layer of every image with
# `cstorage layer export --verify digest` and compare the output's sha256 with the layer's
# diff-digest; one writer loop copies images in with skopeo, tags and removes them with
# podman. Prints operations done, errors reported (e.g. "changed while reading") and wrong
# outputs (an export that succeeded with bytes whose sha256 is not the diff-digest: must be 0).
source "$(dirname "$0")/common.sh"
DURATION=${DURATION:-120}
D=$(mktemp -d /tmp/cst-stress-XXXXXX)
trap 'rm -rf "$D"' EXIT
ROOT=$D/root; RUN=$D/run; OPT=overlay.skip_mount_home=true
SPEC="containers-storage:[overlay@$ROOT+$RUN:$OPT]"
CSTA="$CST --root $ROOT --runroot $RUN --storage-opt $OPT"
PODMAN="podman --root $ROOT --runroot $RUN --storage-driver overlay --storage-opt $OPT --cgroup-manager=cgroupfs --events-backend=none"
mkdir -p "$D/t1/data" "$D/t2/data" "$D/t3/etc"
head -c 20000000 /dev/urandom > "$D/t1/data/big"
head -c 5000000 /dev/urandom > "$D/t2/data/mid"
cp /etc/os-release "$D/t3/etc/"
scripts/mkoci.py "$D/layout" a "$D/t1" >/dev/null
scripts/mkoci.py "$D/layout" b "$D/t1" "$D/t2" >/dev/null
scripts/mkoci.py "$D/layout" c "$D/t3" >/dev/null
skopeo copy -q "oci:$D/layout:a" "${SPEC}localhost/a:latest"
machine_info
echo "stress for $DURATION s"
END=$(( $(date +%s) + DURATION ))
reader() {
    local ok=0 err=0 wrong=0
    while [ "$(date +%s)" -lt $END ]; do
        for l in $($CSTA layers -q 2>/dev/null); do
            want=$($CSTA --format json layer inspect "$l" 2>/dev/null | python3 -c 'import json,sys; print((json.load(sys.stdin)[0]["diff_digest"] or "")[7:])' 2>/dev/null) || { err=$((err+1)); continue; }
            [ -n "$want" ] || continue
            if $CSTA layer export "$l" --verify digest 2>"$D/err.$1" | sha256sum > "$D/sum.$1"; [ "${PIPESTATUS[0]}" = 0 ]; then
                got=$(cut -c1-64 "$D/sum.$1")
                if [ "$got" = "$want" ]; then ok=$((ok+1)); else wrong=$((wrong+1)); echo "WRONG OUTPUT for layer $l" >&2; fi
            else
                err=$((err+1))
            fi
        done
    done
    echo "$ok $err $wrong" > "$D/result.$1"
}
writer() {
    local n=0 fail=0
    while [ "$(date +%s)" -lt $END ]; do
        for step in "skopeo copy -q oci:$D/layout:b ${SPEC}localhost/b:latest" \
                    "$PODMAN tag localhost/b:latest localhost/b:tagged" \
                    "skopeo copy -q oci:$D/layout:c ${SPEC}localhost/c:latest" \
                    "$PODMAN rmi -f localhost/b:tagged localhost/b:latest" \
                    "$PODMAN rmi -f localhost/c:latest"; do
            if $step >/dev/null 2>&1; then n=$((n+1)); else fail=$((fail+1)); fi
        done
    done
    echo "$n $fail" > "$D/result.w"
}
reader 1 & reader 2 & writer & wait
read ok1 err1 wrong1 < "$D/result.1"; read ok2 err2 wrong2 < "$D/result.2"; read wn wf < "$D/result.w"
echo "layer exports verified: $((ok1+ok2)), errors reported: $((err1+err2)), wrong outputs: $((wrong1+wrong2))"
echo "writer operations: $wn done, $wf failed"
test $((wrong1+wrong2)) -eq 0
