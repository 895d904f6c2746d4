#!/usr/bin/env bash
# Creates the unprivileged user the rootless tests run as (needs root): `cstorage-rl`, with a
# subordinate UID and GID range of its own in /etc/subuid and /etc/subgid, as a podman user
# has. Idempotent; prints nothing when the user is already set up.
set -euo pipefail
USER_NAME=cstorage-rl
RANGE_START=300000
RANGE_COUNT=65536
if [ "$(id -u)" -ne 0 ]; then
    echo "rootless-user: must run as root to create $USER_NAME" >&2
    exit 1
fi
if ! id "$USER_NAME" >/dev/null 2>&1; then
    echo "rootless-user: creating $USER_NAME" >&2
    useradd --create-home --shell /bin/bash "$USER_NAME"
fi
# useradd may or may not have allocated a range (login.defs); make sure ours is there.
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    grep -q "^$USER_NAME:$RANGE_START:$RANGE_COUNT\$" "$f" ||
        echo "$USER_NAME:$RANGE_START:$RANGE_COUNT" >> "$f"
done
