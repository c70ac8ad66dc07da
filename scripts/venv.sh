# Sourced by the other scripts: create or refresh .venv when the project's
# dependencies change. Needs only python3 (>= 3.11) on PATH.
# STORMLOCK_EXTRAS picks what to install: scripts/run needs only "bot,http"; the
# tests and benchmarks need "all,dev" (the default) and the test plugin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${STORMLOCK_EXTRAS:-all,dev}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "stormlock needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
stamp=$(cat pyproject.toml tests/plugin/pyproject.toml | "$PYTHON" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
# The stamp is "HASH EXTRAS": what is installed covers what is wanted when the
# hash matches and every wanted extra (all covers bot) was installed.
covered=$("$PYTHON" - "$stamp" "$EXTRAS" <<'PY' 2>/dev/null || echo no
import sys
wanted_hash, wanted = sys.argv[1], set(sys.argv[2].split(","))
try:
    have_hash, _, have = open(".venv/.stamp").read().strip().partition(" ")
except OSError:
    print("no"); sys.exit()
have = set(have.split(",")) if have else {"all", "dev"}  # older stamps: all,dev
if "all" in have:
    have |= {"redis", "postgresql", "dynamodb", "etcd", "http", "api", "bot"}
print("yes" if have_hash == wanted_hash and wanted <= have else "no")
PY
)
if [ ! -x .venv/bin/python ] || [ "$covered" != yes ]; then
    quiet=()
    [ "${CI:-}" = true ] && quiet=(-q)
    echo "setting up .venv with this project (stormlock-leases[$EXTRAS]; pip shows its progress) ..." >&2
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install "${quiet[@]}" --upgrade pip >&2
    packages=(-e ".[$EXTRAS]")
    case ",$EXTRAS," in *,dev,*) packages+=(-e tests/plugin) ;; esac
    .venv/bin/python -m pip install "${quiet[@]}" "${packages[@]}" >&2
    old_extras=$(cut -s -d' ' -f2 .venv/.stamp 2>/dev/null || true)
    if [ -n "$old_extras" ] && [ "$(cut -d' ' -f1 .venv/.stamp)" = "$stamp" ]; then
        EXTRAS="$old_extras,$EXTRAS"  # installing bot keeps all,dev installed
    fi
    echo "$stamp $EXTRAS" > .venv/.stamp
fi
export PATH="$PWD/.venv/bin:$PATH"
