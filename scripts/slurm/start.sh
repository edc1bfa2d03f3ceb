#!/usr/bin/env bash
# Starts a one-node SLURM cluster on 127.0.0.1, as root (install.sh installs it):
#   bash scripts/slurm/start.sh DIR      (stop.sh DIR stops it)
# Partitions cpu (the default) and gpu on the one node, which declares one GPU (gres gpu:1) so
# that GPU jobs are accepted and scheduled; it has no GPU device.
# The configuration goes to /etc/slurm, where every SLURM command and job step looks for it
# (the executor plugin's job steps run srun without SLURM_CONF); one there that this script did
# not write is left alone, and it stops. DIR holds the cluster's state and logs, and jobs.txt,
# a line for every job that ended.
# No accounting database: job states come from slurmctld (squeue, scontrol show job), which
# keeps ended jobs for an hour (MinJobAge). No cgroups either, so that it runs in a container.
set -euo pipefail
dir=$(realpath -m "${1:?usage: start.sh DIR}")
here=$(dirname "$0")
bash "$here/stop.sh" "$dir"
rm -rf "$dir/state" "$dir/spool" "$dir"/*.log "$dir/jobs.txt"
mkdir -p "$dir/state" "$dir/spool"
conf=/etc/slurm/slurm.conf
marker="# A one-node test cluster, written by bayeslib's scripts/slurm/start.sh."
if [[ -e $conf ]] && [[ $(head -n 1 "$conf") != "$marker" ]]; then
    echo "$conf exists and was not written by start.sh: not replacing it" >&2
    exit 1
fi

# Memory the node offers jobs: most of this machine's (a node claiming more is refused).
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$conf" <<CONF
$marker
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
echo "NodeName=localhost Name=gpu File=/dev/null" >/etc/slurm/gres.conf

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
        echo "SLURM is up ($conf)"
        exit 0
    fi
    sleep 0.5
done
echo "SLURM did not come up; its logs:" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2
timeout 5 sinfo -N -l >&2 || true
exit 1
