#!/usr/bin/env bash
# Stops the cluster that start.sh DIR started (and munged, if start.sh started it).
set -euo pipefail
dir=$(realpath -m "${1:?usage: stop.sh DIR}")
stop() {  # the daemon whose pid file is $1, waiting for it to exit (killed after 10 s)
    [[ -f $1 ]] || return 0
    local pid
    pid=$(cat "$1")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}
stop "$dir/slurmd.pid"
stop "$dir/slurmctld.pid"
if [[ -f $dir/munged.started ]]; then
    stop /run/munge/munged.pid
    rm -f "$dir/munged.started"
fi
