#!/usr/bin/env bash
# Re-vendors the Swagger UI and ReDoc bundles that the root serves at /docs and /redoc
# (root_orchestrator/static/vendor), from the npm registry, at the pinned versions.
# Run by hand when upgrading them; the install never runs it (no build step).
set -euo pipefail
cd "$(dirname "$0")/.."

SWAGGER_UI_VERSION=5.35.0  # swagger-ui-dist, Apache-2.0
REDOC_VERSION=2.5.2        # redoc, MIT
dest=root_orchestrator/static/vendor

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "swagger-ui-dist@$SWAGGER_UI_VERSION" "redoc@$REDOC_VERSION" >/dev/null)
mkdir -p "$tmp/swagger" "$tmp/redoc"
tar xzf "$tmp/swagger-ui-dist-$SWAGGER_UI_VERSION.tgz" -C "$tmp/swagger"
tar xzf "$tmp/redoc-$REDOC_VERSION.tgz" -C "$tmp/redoc"

rm -rf "$dest/swagger-ui" "$dest/redoc"
mkdir -p "$dest/swagger-ui" "$dest/redoc"
s="$tmp/swagger/package"
cp "$s/swagger-ui-bundle.js" "$s/swagger-ui-bundle.js.LICENSE.txt" "$s/swagger-ui.css" \
  "$s/favicon-32x32.png" "$s/LICENSE" "$s/NOTICE" "$dest/swagger-ui/"
r="$tmp/redoc/package"
cp "$r/bundles/redoc.standalone.js" "$r/bundles/redoc.standalone.js.LICENSE.txt" "$r/LICENSE" \
  "$dest/redoc/"

# The one change to upstream: ReDoc's sidebar shows a logo fetched from its CDN. An
# empty data: URL fails to load instead, and ReDoc then hides the image.
sed -i 's#https://cdn\.redoc\.ly/redoc/logo-mini\.svg#data:,#' "$dest/redoc/redoc.standalone.js"
if grep -q 'cdn\.redoc\.ly' "$dest/redoc/redoc.standalone.js"; then
  echo "ReDoc still names its CDN: check the patch above" >&2
  exit 1
fi

{
  echo "swagger-ui-dist $SWAGGER_UI_VERSION (Apache-2.0), redoc $REDOC_VERSION (MIT; logo URL patched)"
  (cd "$dest" && sha256sum swagger-ui/* redoc/*)
} >"$dest/SOURCES.txt"
echo "vendored into $dest:"
du -sh "$dest"/swagger-ui "$dest"/redoc
