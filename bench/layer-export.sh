#!/usr/bin/env bash
# Benchmark: rebuilding a 1.3 GB layer (real files copied from /usr) from its tar-split.
#   cstorage layer export (--verify crc / none / digest)  vs  containers-storage diff -u
#   vs  tar-split asm, into a pipe and into a file, with `cat` of the same files as the floor.
# Builds the store once with skopeo (kept in $BENCH_DIR/layer-1g). Not a test.
source "$(dirname "$0")/common.sh"
use_layer_1g
CS="containers-storage -s overlay -g $ROOT -R $RUN --storage-opt $OPT"
L=$($CSTA layers -q | head -n1)
DIFF=$ROOT/overlay/$L/diff
SIZE=$($CSTA --format json layer inspect "$L" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["diff_size"])')
FILES=$($CSTA layer ls -l "$L" | grep -c '^-' || true)
# The regular files of the layer in tar order, for the `cat` floor.
$CSTA --format json layer ls "$L" | python3 -c '
import json, sys, os
for e in json.load(sys.stdin):
    if e["entry_type"] == "regular" and e["size"] > 0:
        sys.stdout.write(os.path.normpath(e["path"]) + "\0")' > "$D/files.list"
OUT=$D/out.tar
machine_info
echo "layer: $L, $SIZE bytes, $FILES regular files"
# Correctness first: our export is the layer (sha256 = diff-digest) and equals Go's bytes.
DIGEST=$($CSTA --format json layer inspect "$L" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["diff_digest"])')
test "sha256:$($CSTA layer export "$L" --verify none | sha256sum | cut -c1-64)" = "$DIGEST"
test "$($CS diff -u "$L" | sha256sum | cut -c1-64)" = "${DIGEST#sha256:}"
cat_pipe="cd $DIFF && xargs -0 -a $D/files.list cat | cat >/dev/null"
cat_file="cd $DIFF && xargs -0 -a $D/files.list cat >$OUT"
echo
echo "== into a pipe (ratio = time / cstorage --verify crc)"
hyperfine --warmup 1 --runs ${RUNS:-5} --export-json "$D/pipe.json" \
    "$CSTA layer export $L --verify crc | cat >/dev/null" \
    "$CSTA layer export $L --verify none | cat >/dev/null" \
    "$CSTA layer export $L --verify digest | cat >/dev/null" \
    "$CS diff -u $L | cat >/dev/null" \
    "tar-split asm --input $ROOT/overlay-layers/$L.tar-split.gz --path $DIFF --output - | cat >/dev/null" \
    "$cat_pipe" >/dev/null
ratios "$D/pipe.json"
echo
echo "== into a file (ratio = time / cstorage --verify crc)"
hyperfine --warmup 1 --runs ${RUNS:-5} --export-json "$D/file.json" --prepare "rm -f $OUT" \
    "$CSTA layer export $L --verify crc -o $OUT" \
    "$CSTA layer export $L --verify none -o $OUT" \
    "$CSTA layer export $L --verify digest -o $OUT" \
    "$CS diff -u $L >$OUT" \
    "tar-split asm --input $ROOT/overlay-layers/$L.tar-split.gz --path $DIFF --output $OUT" \
    "$cat_file" >/dev/null
ratios "$D/file.json"
rm -f "$OUT"
echo
echo "== peak RSS"
for v in crc none digest; do
    /usr/bin/time -f "  cstorage --verify $v: %M KiB" $CSTA layer export "$L" --verify $v >/dev/null
done
/usr/bin/time -f "  containers-storage diff -u: %M KiB" $CS diff -u "$L" >/dev/null
