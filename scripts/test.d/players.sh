# Sourced by scripts/test (bash, set -euo pipefail).
#
# edge-seed/tests/players.rs plays the packager's output with ClearKey in
# stock web players (dash.js, hls.js, shaka-player from the npm registry)
# inside Debian's headless Chromium. Install Chromium and npm when missing,
# install the players from the committed lock file with `npm ci` into
# edge-seed/tests/browser/node_modules (again only when the lock file
# changed), and make the test mandatory (LOAVES_REQUIRE_BROWSER=1: it fails
# instead of skipping when the browser or the players are missing).

loaves_players_missing=()
[ -x /usr/bin/chromium ] || loaves_players_missing+=(chromium)
command -v npm >/dev/null 2>&1 || loaves_players_missing+=(npm)
if [ "${#loaves_players_missing[@]}" -gt 0 ]; then
    echo "players.sh: installing ${loaves_players_missing[*]} from the Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${loaves_players_missing[@]}" >/dev/null
fi
unset loaves_players_missing

loaves_players_dir=edge-seed/tests/browser
loaves_players_stamp="$loaves_players_dir/node_modules/.loaves-lock.sha256"
loaves_players_want="$(sha256sum "$loaves_players_dir/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$loaves_players_stamp" 2>/dev/null || true)" != "$loaves_players_want" ]; then
    echo "players.sh: npm ci in $loaves_players_dir" >&2
    (cd "$loaves_players_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$loaves_players_want" >"$loaves_players_stamp"
fi
unset loaves_players_dir loaves_players_stamp loaves_players_want
export LOAVES_REQUIRE_BROWSER=1
