#!/usr/bin/env bash
# Make sure PostgreSQL's server programs (initdb, pg_ctl, postgres) are installed, for the
# tests of several workers sharing a study (tests/test_workers.py). They start their own
# throw-away server on 127.0.0.1; this script only installs Debian's package when absent.
# The Python driver (psycopg2) comes with the project's dependencies (scripts/setup.sh).
set -euo pipefail

have_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1
}

if have_server; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_postgres: PostgreSQL's server (initdb, pg_ctl) is missing and this is not a Debian-like" \
         "system; install the PostgreSQL server package with your package manager." >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "ensure_postgres: installing PostgreSQL needs root; run 'apt-get install -y postgresql' as root." >&2
        exit 1
    fi
fi

# The tests need the programs, not a system-wide cluster running on port 5432: tell
# postgresql-common not to create one (our file is kept over the package's default).
"${SUDO[@]}" mkdir -p /etc/postgresql-common
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
echo "ensure_postgres: installing Debian's postgresql package" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold postgresql >/dev/null
if ! have_server; then
    echo "ensure_postgres: apt-get installed postgresql but initdb is still not found" >&2
    exit 1
fi
