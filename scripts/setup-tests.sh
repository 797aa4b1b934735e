#!/usr/bin/env bash
# Installs what the test suite needs and is missing here, and nothing that is there already:
# python3 with pip (Ember's `pypi:` model source), npm and espeak-ng (the speech tests'
# audio), Chromium and chromedriver (the chat page's check in a headless browser), Mesa's
# lavapipe (the wgpu suite runs on it: a real Vulkan driver on the CPU), rustfmt and clippy,
# the test models (models/) and libtorch for the tch backend (libtorch/, ~900 MB once).
# Debian or Ubuntu packages through apt-get (as root, or through sudo). `.ci/run` and
# `scripts/test.sh` (`just test`) call it.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
python3 -m pip --version >/dev/null 2>&1 || need+=(python3 python3-pip)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.json ] ||
  need+=(mesa-vulkan-drivers libvulkan1)
# npm fetches the speech tests' audio clip (scripts/fetch-models.sh); espeak-ng speaks their
# long-form test's text.
command -v npm >/dev/null || need+=(npm)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
# Headless Chromium and its WebDriver for the chat page's check (tests/serve/chat_page.py);
# Debian's packages (Ubuntu's chromium is a snap, which containers cannot run).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if ! command -v apt-get >/dev/null; then
    echo "setup-tests.sh: install ${need[*]} (no apt-get here)" >&2
    exit 1
  fi
  echo "setup-tests.sh: installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >&2
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The official `openai` client (PyPI), which tests/serve/openai_client.py runs against
# `ember serve`, in a virtual environment of its own (.venv/, ignored by git).
if ! .venv/bin/python -c "import openai" >/dev/null 2>&1; then
  echo "setup-tests.sh: installing the openai client into .venv/" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install -q "openai==3.57.0" >&2
fi

scripts/fetch-models.sh
scripts/fetch-libtorch.sh
