#!/bin/bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py and for
# trying `unet-tiles segment --cluster slurm.yaml` without a real cluster.
#
#   sudo bash deploy/slurm/local-slurm.sh          # install (once), configure, start, wait
#   sudo bash deploy/slurm/local-slurm.sh status   # sinfo / squeue
#   sudo bash deploy/slurm/local-slurm.sh stop     # stop slurmd, slurmctld, munged
#
# Debian/Ubuntu, as root, no systemd needed (containers): the daemons are started
# directly. Idempotent: running it again rewrites the same configuration and
# starts only what is not running. Nothing listens beyond this host: the
# controller and the node are 127.0.0.1. No cgroups (proctrack/linuxproc,
# task/none), so it runs in unprivileged containers; jobs are not confined.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
RUN=/run/slurm
MUNGE_KEY=/etc/munge/munge.key
HOST=$(hostname -s)
# Memory left to the rest of the machine (MiB) when declaring RealMemory.
MEM_MARGIN_MB=${MEM_MARGIN_MB:-1024}
# Jobs per CPU a node may run at once (partition OverSubscribe=FORCE:N): with 2
# cores, two 1-core dask-jobqueue jobs run side by side either way.
OVERSUBSCRIBE=${OVERSUBSCRIBE:-2}

log() { echo "local-slurm: $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        log "run as root (it installs packages and starts daemons)"; exit 1
    fi
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sinfo >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
}

write_munge_key() {
    if [ -s "$MUNGE_KEY" ]; then
        chown munge:munge "$MUNGE_KEY"; chmod 400 "$MUNGE_KEY"; return
    fi
    log "creating $MUNGE_KEY"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$MUNGE_KEY"
    elif command -v create-munge-key >/dev/null; then
        create-munge-key -f
    else
        dd if=/dev/urandom bs=1 count=1024 of="$MUNGE_KEY" status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
}

write_config() {
    local cpus mem_kb mem_mb
    cpus=$(nproc)
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$(( mem_kb / 1024 - MEM_MARGIN_MB ))
    [ "$mem_mb" -gt 512 ] || mem_mb=512
    mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS" "$RUN"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by deploy/slurm/local-slurm.sh: a one-node cluster on $HOST.
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# A cancelled or timed-out job's processes get this long between SIGTERM and SIGKILL.
KillWait=10
# Short timeouts: a restarted slurmd is back at once, a dead one noticed in a minute.
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$OVERSUBSCRIBE
EOF
    if ! cmp -s "$tmp" "$CONF"; then
        log "writing $CONF (NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb)"
        install -m 644 "$tmp" "$CONF"
        CONFIG_CHANGED=1
    fi
    rm -f "$tmp"
}

start_munge() {
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    if pid_alive /run/munge/munged.pid; then return; fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do
        munge -n </dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    log "munged does not answer: see /var/log/munge/munged.log"; exit 1
}

start_slurm() {
    if [ "${CONFIG_CHANGED:-0}" = 1 ]; then
        stop_daemon slurmd "$RUN/slurmd.pid"
        stop_daemon slurmctld "$RUN/slurmctld.pid"
    fi
    if ! pid_alive "$RUN/slurmctld.pid"; then
        log "starting slurmctld"
        /usr/sbin/slurmctld
    fi
    for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
    if ! pid_alive "$RUN/slurmd.pid"; then
        log "starting slurmd"
        /usr/sbin/slurmd
    fi
}

wait_idle() {
    local state
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mixed|allocated) log "node $HOST is $state"; sinfo; return ;;
            down*|drain*)
                # ReturnToService=2 brings it back once slurmd registers; a node
                # left down by an earlier run of this script is resumed here.
                scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    log "node $HOST not idle after 60 s (state: ${state:-none}); see $LOGS"
    sinfo || true
    exit 1
}

stop_daemon() {  # name pidfile
    local pid
    if pid_alive "$2"; then
        pid=$(cat "$2")
        log "stopping $1 ($pid)"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$2"
}

stop_all() {
    # Jobs first, so no dask worker outlives the cluster.
    if command -v scancel >/dev/null && scontrol ping >/dev/null 2>&1; then
        scancel --user="$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    stop_daemon slurmd "$RUN/slurmd.pid"
    stop_daemon slurmctld "$RUN/slurmctld.pid"
    stop_daemon munged /run/munge/munged.pid
}

case "${1:-start}" in
    start)
        need_root
        install_packages
        write_munge_key
        write_config
        start_munge
        start_slurm
        wait_idle
        ;;
    stop)
        need_root
        stop_all
        ;;
    status)
        sinfo && squeue
        ;;
    *)
        echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
