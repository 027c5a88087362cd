# Sourced by scripts/test (bash, set -euo pipefail).
#
# The deploy checks (deploy/checks, crate deploy-checks) run promtool and
# kubernetes-validate, and start the real license server and tracker. This
# installs the tools when missing (Debian's prometheus package for promtool,
# kubernetes-validate from PyPI, which ships the Kubernetes schemas) and makes the checks mandatory (LOAVES_REQUIRE_DEPLOY_TOOLS=1: a missing
# tool fails the tests instead of skipping them).

if ! command -v promtool >/dev/null 2>&1; then
    echo "deploy.sh: installing promtool (Debian's prometheus package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# pip puts console scripts here; pyenv shims may not know a new one yet.
loaves_py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
case ":$PATH:" in
    *":$loaves_py_scripts:"*) ;;
    *) export PATH="$PATH:$loaves_py_scripts" ;;
esac
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "deploy.sh: installing kubernetes-validate (PyPI)" >&2
    python3 -m pip install --quiet kubernetes-validate
fi

# The server binaries come from `cargo test --workspace` itself: it builds the
# binaries of every package with integration tests before running any test.
# A separate `cargo build` here would compile the dependency tree a second
# time with other features, doubling the disk the build needs.
export LOAVES_REQUIRE_DEPLOY_TOOLS=1
