# Sourced by scripts/test (bash, set -euo pipefail).
#
# The tracker's dashboard test renders /dashboard in a real browser: Debian's
# headless Chromium. Install it when missing, and make the test mandatory
# (LOAVES_REQUIRE_CHROMIUM=1: the test fails instead of skipping when the
# browser cannot be found).

if [ ! -x /usr/bin/chromium ]; then
    echo "chromium.sh: installing chromium from the Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
export LOAVES_REQUIRE_CHROMIUM=1
