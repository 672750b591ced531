#!/usr/bin/env bash
# Copy the dashboard's pinned browser assets (package-lock.json) into the package, with
# their licences. Run after changing package.json; the copies are committed, so users
# and CI never need Node.js.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
out=../corral/api/static/ui
mkdir -p "$out"
cp node_modules/htmx.org/dist/htmx.min.js "$out/htmx.min.js"
cp node_modules/htmx.org/LICENSE "$out/htmx.LICENSE"
cp node_modules/htmx-ext-sse/sse.js "$out/htmx-sse.js"
cp node_modules/htmx-ext-sse/LICENSE "$out/htmx-sse.LICENSE"
