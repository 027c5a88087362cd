# Sourced by scripts/test (bash, set -euo pipefail).
#
# The network lab's tests (loadtests/tests/lab.rs) build network namespaces
# joined by veth links, with home routers doing NAT in nftables and link
# rates set with tc. This installs nftables (and iproute2, for `ip` and
# `tc`) when missing and running as root, and makes the lab tests mandatory
# (LOAVES_REQUIRE_LAB=1: a missing tool or capability fails them instead of
# skipping them; CI=true does the same).

loaves_lab_missing=()
command -v nft >/dev/null 2>&1 || loaves_lab_missing+=(nftables)
{ command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; } || loaves_lab_missing+=(iproute2)
if [ "${#loaves_lab_missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nftables.sh: installing ${loaves_lab_missing[*]} from the Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${loaves_lab_missing[@]}" >/dev/null
fi
unset loaves_lab_missing
if [ "$(id -u)" = 0 ]; then
    export LOAVES_REQUIRE_LAB=1
fi
