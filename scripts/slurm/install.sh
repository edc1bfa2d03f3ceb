#!/usr/bin/env bash
# Installs a SLURM for a one-node cluster on this machine (Debian's packages); needs root.
# Installs only what is missing, so it can run before every test session.
set -euo pipefail
packages=(slurm-wlm slurm-client munge)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
