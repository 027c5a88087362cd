# Sourced by scripts/test (bash, set -euo pipefail).
#
# The operations walkthrough (docs/operations.md, "From zero on one
# machine") is run by scripts/ops-walkthrough from a test of the workspace
# (client-sdk/viewer/tests/ops_walkthrough.rs), with the binaries that
# `cargo test --workspace` builds. It needs openssl, curl and python3; this
# installs the first two when missing (python.sh sees to python3) and makes
# the test mandatory (LOAVES_REQUIRE_OPS_WALKTHROUGH=1: a missing tool fails
# it instead of skipping it).

if ! command -v openssl >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    echo "ops-walkthrough.sh: installing openssl and curl" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssl curl ca-certificates >/dev/null
fi
export LOAVES_REQUIRE_OPS_WALKTHROUGH=1
