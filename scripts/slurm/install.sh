#!/usr/bin/env bash
# Installs a SLURM for a one-node cluster on this machine (Debian's packages); needs root.
# Installs only what is missing, so it can run before every test session.
set -euo pipefail
exec bash "$(dirname "$0")/../system_packages.sh" slurm-wlm slurm-client munge
