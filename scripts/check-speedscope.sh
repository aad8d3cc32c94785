#!/usr/bin/env bash
# Open a speedscope file in the real speedscope web app, in headless Chromium, and check that
# the app loaded it (speedscope names the page after the profile it shows); write a
# screenshot next to it.
#
#   scripts/check-speedscope.sh PROFILE.speedscope.json [SCREENSHOT.png]
#
# The web app comes from the npm package `speedscope` (its `dist/release` folder): set
# SPEEDSCOPE_DIR to a folder holding that build (index.html and its files), or have `npm`
# reach its registry and the package is fetched into a temporary folder. Needs chromium
# (Debian: `apt-get install chromium`) and python3 (a static server on 127.0.0.1).
# Exit 0: loaded; 1: the app did not load the profile; 2: a tool is missing.
set -euo pipefail
profile=${1:?usage: check-speedscope.sh PROFILE.speedscope.json [SCREENSHOT.png]}
shot=${2:-}
[ -f "$profile" ] || { echo "check-speedscope: no file $profile" >&2; exit 2; }
chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chrome" ] || { echo "check-speedscope: no chromium (apt-get install chromium)" >&2; exit 2; }

work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
if [ -n "${SPEEDSCOPE_DIR:-}" ]; then
  cp -r "$SPEEDSCOPE_DIR"/. "$work/"
else
  command -v npm >/dev/null || { echo "check-speedscope: set SPEEDSCOPE_DIR or install npm" >&2; exit 2; }
  if ! (cd "$work" && timeout 60 npm pack --silent speedscope >/dev/null 2>&1); then
    echo "check-speedscope: npm could not fetch the speedscope package; set SPEEDSCOPE_DIR" >&2
    exit 2
  fi
  tar -xzf "$work"/speedscope-*.tgz -C "$work"
  cp -r "$work"/package/dist/release/. "$work/"
fi
[ -f "$work/index.html" ] || { echo "check-speedscope: no index.html in the speedscope build" >&2; exit 2; }
cp "$profile" "$work/profile.speedscope.json"
# The profile's own name, which speedscope puts in the page title once it has loaded it.
name=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("name") or "")' "$profile")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/index.html')" 2>/dev/null && break
  sleep 0.1
done
url="http://127.0.0.1:$port/index.html#profileURL=http://127.0.0.1:$port/profile.speedscope.json"
flags=(--headless --no-sandbox --disable-gpu --no-first-run --user-data-dir="$work/chrome"
       --virtual-time-budget=10000 --window-size=1400,800)
dom=$("$chrome" "${flags[@]}" --dump-dom "$url" 2>/dev/null || true)
title=$(printf '%s' "$dom" | python3 -c 'import re,sys; m=re.search(r"<title>(.*?)</title>", sys.stdin.read(), re.S); print(m.group(1) if m else "")')
if [ -n "$shot" ]; then
  "$chrome" "${flags[@]}" --screenshot="$shot" "$url" >/dev/null 2>&1 || true
fi
echo "check-speedscope: page title: $title"
if [ -n "$name" ] && [[ "$title" == *"$name"* ]]; then
  echo "check-speedscope: ok: speedscope $(head -1 "$work/release.txt" 2>/dev/null || echo '?') loaded $profile"
  exit 0
fi
echo "check-speedscope: FAILED: the page title does not name the profile '$name'" >&2
exit 1
