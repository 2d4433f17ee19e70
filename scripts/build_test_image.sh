#!/usr/bin/env bash
# Build the local busybox test image (no registry needed: nothing is pulled).
#
# The image holds a static busybox at /bin/busybox with a symlink per applet (sh, sleep,
# head, tr...), the usual empty directories, and CMD ["sh"]. It is the same image that
# tests/fixtures/images.py builds through the Docker SDK; both skip the build when an image
# with the same tag and version label exists, so running this twice is cheap.
#
# Usage: scripts/build_test_image.sh [TAG]   (default edge-test/busybox:latest)
# Needs: the docker CLI, a running engine, and a static busybox (Debian: busybox-static).
set -euo pipefail

TAG="${1:-edge-test/busybox:latest}"
VERSION="1"   # keep in step with IMAGE_VERSION in tests/fixtures/images.py
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if ! docker info >/dev/null 2>&1; then
    echo "build_test_image: no Docker engine answers; skipping the test image" >&2
    exit 0
fi

have="$(docker image inspect --format '{{ index .Config.Labels "edge.test.image.version" }}' \
    "$TAG" 2>/dev/null || true)"
if [ "$have" = "$VERSION" ]; then
    echo "build_test_image: $TAG (version $VERSION) already present"
    exit 0
fi

if ! "$BUSYBOX" --list >/dev/null 2>&1; then
    echo "build_test_image: $BUSYBOX is not a working busybox (apt-get install busybox-static)" >&2
    exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "build_test_image: $BUSYBOX is dynamically linked; a static busybox is needed" >&2
    exit 1
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/dev/shm" "$root/proc" "$root/sys" "$root/etc" "$root/root"
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$root.tar" .
trap 'rm -rf "$root" "$root.tar"' EXIT
docker import \
    --change 'CMD ["sh"]' \
    --change 'ENV PATH=/bin' \
    --change "LABEL edge.test.image.version=$VERSION" \
    "$root.tar" "$TAG" >/dev/null
echo "build_test_image: built $TAG (version $VERSION)"
