#!/usr/bin/env bash
# Debian packages the tests start for real: headless Chromium (report and MLflow pages), a
# one-node SLURM cluster (slurm-wlm, slurm-client, munge; scripts/slurm), and the C++ compiler
# that sample(compile=True) builds its libraries with (g++).
# Installs only what is missing, with apt-get as root (through sudo when run as a user).
# Usage: bash scripts/system_packages.sh [PACKAGE ...] (default: all of the above)
set -euo pipefail
packages=("$@")
((${#packages[@]})) || packages=(chromium chromium-driver slurm-wlm slurm-client munge g++)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    as_root=()
    [[ $(id -u) -eq 0 ]] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
