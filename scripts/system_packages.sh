#!/usr/bin/env bash
# Debian packages the slow tests start for real: headless Chromium (report and MLflow pages).
# Needs root (CI runs as root); installs only what is missing.
set -euo pipefail
packages=(chromium chromium-driver)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
