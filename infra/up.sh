#!/usr/bin/env bash
# recwatch infra up without installing the package: runs from the repository's virtual environment.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
make -s -C "$repo" venv system-deps >/dev/null
exec "$repo/.venv/bin/python" -m recwatch.cli infra up "$@"
