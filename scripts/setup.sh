#!/usr/bin/env bash
# Create .venv from nothing on a fresh Debian machine (apt packages included); a no-op when up to date.
# Re-runs pip only when pyproject.toml or this script changed (stamp in .venv/.setup-stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg chromium)   # ffmpeg: bench/ingest baseline, non-wav uploads in the app; chromium: browser test
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing apt packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/clipsep ]; then
    exit 0
fi
echo "setup: creating/updating .venv (first time: a few minutes)"
if [ ! -x .venv/bin/python ]; then
    python3.11 -m venv .venv || python3 -m venv .venv
    # only a new venv's: on a re-run this would lift setuptools past torch's bound (< 82) until
    # the install below settled it back, printing a dependency-conflict ERROR meanwhile
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip setuptools wheel 2>&1 | grep -v "is ignored" || true
fi
# setuptools boxes an "Editable installation" notice on every editable install of a flat layout:
# a ./clipsep folder in the working directory would be imported first (so would any package's);
# informational, nothing to do
PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[platform,app,test,onnx]" 2>&1 | grep -v "is ignored" || true
# tinysoundfont declares pyaudio (live playback only, needs portaudio headers); rendering never imports it
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps tinysoundfont==0.3.7 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import clipsep, torch, open_clip, av, tinysoundfont, great_expectations, prefect, mlflow, dvc, gradio, onnxruntime, onnxscript" \
    || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done"
