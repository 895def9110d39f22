#!/bin/sh
# Rebuilds dist/ from src/ and fails if the result differs from what is
# committed: dist/rtgate.js is what the gateway serves at /v1/client.js, so
# it must be exactly `npm run build` of the sources. Then runs the tests.
set -eu
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/tsc ]; then
  npm ci --no-audit --no-fund >/dev/null
fi
npm run --silent build
if ! git diff --quiet --exit-code HEAD -- dist/; then
  echo "check.sh: clients/js/dist/ differs from a fresh build of src/:" >&2
  git --no-pager diff --stat HEAD -- dist/ >&2
  echo "check.sh: run 'npm run build' in clients/js and commit dist/." >&2
  exit 1
fi
if [ -n "$(git ls-files --others --exclude-standard -- dist/)" ]; then
  echo "check.sh: untracked files in clients/js/dist/: commit them or fix the build." >&2
  git ls-files --others --exclude-standard -- dist/ >&2
  exit 1
fi
npm test --silent
echo "check.sh: dist/ matches src/ and the tests pass."
