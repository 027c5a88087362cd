# Sourced by scripts/test (bash, set -euo pipefail).
#
# The license server's tests run their suite against PostgreSQL as well as
# SQLite. When LOAVES_TEST_POSTGRES_URL is not set, this starts a private,
# throw-away PostgreSQL cluster (Debian's packages, installed if missing) on
# a free local port in a temporary directory, creates a database, exports
# LOAVES_TEST_POSTGRES_URL, and stops the cluster when scripts/test exits.

loaves_pg_start() {
    local pg_bin pg_dir port run_as
    if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        echo "postgres.sh: installing PostgreSQL from the Debian packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq postgresql >/dev/null
    fi
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

    # initdb refuses to run as root: use the postgres account then.
    run_as=()
    if [ "$(id -u)" = 0 ]; then
        run_as=(runuser -u postgres --)
    fi
    pg_dir=$(mktemp -d /tmp/loaves-pg.XXXXXX)
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$pg_dir"
    fi

    # A free port: the first one nothing answers on.
    port=55432
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
        if [ "$port" -gt 55532 ]; then
            echo "postgres.sh: no free port in 55432..55532" >&2
            return 1
        fi
    done

    "${run_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust \
        --no-sync >"$pg_dir/initdb.log" 2>&1 || {
        cat "$pg_dir/initdb.log" >&2
        return 1
    }
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
        -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=300" \
        start >/dev/null || {
        cat "$pg_dir/server.log" >&2
        return 1
    }
    "${run_as[@]}" "$pg_bin/psql" -h "$pg_dir" -p "$port" -U postgres -q \
        -c "CREATE DATABASE loaves_test" >/dev/null

    LOAVES_PG_STOP="${run_as[*]} $pg_bin/pg_ctl -D $pg_dir/data -m fast -w stop"
    LOAVES_PG_DIR=$pg_dir
    export LOAVES_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/loaves_test"
    echo "postgres.sh: PostgreSQL on 127.0.0.1:$port ($pg_dir)" >&2
}

loaves_pg_stop() {
    if [ -n "${LOAVES_PG_STOP:-}" ]; then
        $LOAVES_PG_STOP >/dev/null 2>&1 || true
        rm -rf "${LOAVES_PG_DIR:?}"
        LOAVES_PG_STOP=
    fi
}

if [ -z "${LOAVES_TEST_POSTGRES_URL:-}" ]; then
    loaves_pg_start
    # Keep whatever exit trap an earlier setup script installed.
    loaves_pg_prev_trap=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
    # shellcheck disable=SC2064
    trap "loaves_pg_stop; ${loaves_pg_prev_trap}" EXIT
fi
