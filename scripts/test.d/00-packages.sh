# Sourced first by scripts/test (bash, set -euo pipefail).
#
# One `apt-get update` and one install for every Debian package the tests
# need, instead of one round per setup script (the scripts after this one
# still check and install on their own, so each stays usable alone).

loaves_missing=()
command -v ffmpeg >/dev/null 2>&1 || loaves_missing+=(ffmpeg)
command -v promtool >/dev/null 2>&1 || loaves_missing+=(prometheus)
[ -x /usr/bin/chromium ] || loaves_missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || loaves_missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || loaves_missing+=(openssl)
command -v curl >/dev/null 2>&1 || loaves_missing+=(curl)
command -v nft >/dev/null 2>&1 || loaves_missing+=(nftables)
if [ "${#loaves_missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test: installing ${loaves_missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${loaves_missing[@]}" >/dev/null
fi
unset loaves_missing
