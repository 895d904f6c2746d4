#!/bin/bash
# collect.sh STORE... - dump what a reader needs to know about each store into
# tests/trixie/reports/<store>.txt (runs containers-storage inside the chroot)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ENV=$HERE/trixie-env.sh
STORES=/var/cache/cstorage-trixie/work/stores
OUT=$HERE/reports
mkdir -p "$OUT"
[ $# -gt 0 ] || set -- plain chunked composefs imagestore transient built

conf_get() { sed -n "s/^$2 = \"\\(.*\\)\"/\\1/p" "$1" | head -1; }

for n in "$@"; do
	s=$STORES/$n conf=$STORES/$n/storage.conf
	g=$(conf_get "$conf" graphroot) r=$(conf_get "$conf" runroot) is=$(conf_get "$conf" imagestore)
	extra=(--storage-opt overlay.skip_mount_home=true --storage-opt overlay.mountopt=nodev)
	[ -n "$is" ] && extra+=(--image-store "$is")
	grep -q '^transient_store = true' "$conf" && extra+=(--transient-store)
	grep -q 'use_composefs = "true"' "$conf" && extra+=(--storage-opt overlay.use_composefs=true)
	cs() { CONTAINERS_STORAGE_CONF=$conf "$ENV" run containers-storage -s overlay -g "$g" -R "$r" "${extra[@]}" "$@"; }
	{
		echo "##### store $n"
		echo "### storage.conf"; cat "$conf"
		echo; echo "### tree (diff/ contents and l/ trimmed)"
		(cd "$s" && find . -path '*/diff/*' -prune -o -path './*/overlay/l/*' -prune -o -print | sort |
			sed -E 's/([0-9a-f]{12})[0-9a-f]{52}/\1…/g' | head -150)
		echo; echo "### file listing with sizes (no diff/ contents)"
		(cd "$s" && find . \( -path '*/diff/*' -o -path '*/merged/*' \) -prune -o -type f -printf '%10s %M %p\n' | sort -k3 | head -80)
		echo; echo "### tar-split files"; (cd "$s" && find . -name '*.tar-split.gz' -printf '%10s %p\n' | sort -k2)
		for lj in $(cd "$s" && find . -name 'layers.json' -o -name 'volatile-layers.json' | sort); do
			echo; echo "### $lj"; jq . "$s/$lj"
		done
		for ij in $(cd "$s" && find . -name 'images.json' | sort); do
			echo; echo "### $ij"; jq . "$s/$ij"
		done
		for cj in $(cd "$s" && find . -name 'containers.json' -o -name 'volatile-containers.json' | sort); do
			echo; echo "### $cj"; jq . "$s/$cj"
		done
		echo; echo "### containers-storage -s overlay -g $g -R $r ${extra[*]} layers -j"
		cs layers -j 2>&1
		echo; echo "### ... images -j"
		cs images -j 2>&1
		echo; echo "### ... containers -j"
		cs containers -j 2>&1
		echo; echo "### diff -u LAYER | sha256sum  vs  diff-digest (from containers-storage layers -j)"
		cs layers -j 2>/dev/null | jq -r '.[] | [.id, (."diff-digest" // "-"), (."diff-size" // "-")] | @tsv' |
		while IFS=$'\t' read -r id dd ds; do
			got=$(cs diff -u "$id" 2>/tmp/cs-diff-err.$$ | tee >(wc -c >/tmp/cs-diff-len.$$) | sha256sum | cut -d' ' -f1)
			sleep 0.1
			echo "layer ${id:0:12}: diff -u sha256:$got len $(cat /tmp/cs-diff-len.$$) | recorded $dd size $ds | $([ "sha256:$got" = "$dd" ] && echo MATCH || echo DIFFERENT)"
			[ -s /tmp/cs-diff-err.$$ ] && sed 's/^/    stderr: /' /tmp/cs-diff-err.$$ | grep -v cgroups-v1
		done
		rm -f /tmp/cs-diff-err.$$ /tmp/cs-diff-len.$$
	} >"$OUT/$n.txt" 2>&1
	echo "wrote $OUT/$n.txt ($(wc -l <"$OUT/$n.txt") lines)"
done
