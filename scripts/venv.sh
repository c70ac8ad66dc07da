# Sourced by the other scripts: create or refresh .venv when the project's
# dependencies change. Needs only python3 (>= 3.11) on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "stormlock needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
stamp=$(cat pyproject.toml tests/plugin/pyproject.toml | "$PYTHON" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
    echo "setting up .venv ..." >&2
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[all,dev]' -e tests/plugin
    echo "$stamp" > .venv/.stamp
fi
export PATH="$PWD/.venv/bin:$PATH"
