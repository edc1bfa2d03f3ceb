#!/usr/bin/env bash
# Starts a one-node SLURM cluster on 127.0.0.1, as root (scripts/slurm/install.sh installs it):
#   bash scripts/slurm/start.sh DIR; export SLURM_CONF=DIR/slurm.conf
# DIR (made if missing) holds its configuration, state and logs; DIR/jobs.txt records every job
# that ended (jobcomp/filetxt). Partitions: cpu (the default) and gpu, on the one node, which
# declares one GPU (gres gpu:1) so that GPU jobs are accepted; it has no GPU device.
# No accounting database: job states come from slurmctld (squeue), which keeps ended jobs for
# MinJobAge. No cgroups either, so that it runs in a container. Stop it with stop.sh DIR.
set -euo pipefail
dir=$(realpath -m "${1:?usage: start.sh DIR}")
here=$(dirname "$0")
bash "$here/stop.sh" "$dir"
rm -rf "$dir/state" "$dir/spool" "$dir"/*.log "$dir/jobs.txt"
mkdir -p "$dir/state" "$dir/spool"
export SLURM_CONF=$dir/slurm.conf

# Memory the node offers jobs: most of this machine's (a node claiming more is refused).
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$SLURM_CONF" <<CONF
ClusterName=bayeslib
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobs.txt
MinJobAge=3600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$memory_mb Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
# A GPU gres needs a device file: /dev/null stands for the GPU this node does not have.
echo "NodeName=localhost Name=gpu File=/dev/null" >"$dir/gres.conf"

# munge authenticates SLURM's messages; one already running (with this machine's key) serves.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$dir/munged.started"
fi
/usr/sbin/slurmctld -c
/usr/sbin/slurmd -N localhost

for _ in $(seq 60); do
    kill -0 "$(cat "$dir/slurmctld.pid" 2>/dev/null)" 2>/dev/null || break
    if [[ $(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | sort -u) == idle ]]; then
        echo "SLURM is up: export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "SLURM did not come up; its logs:" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
