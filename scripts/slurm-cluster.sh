#!/usr/bin/env bash
# Single-node Slurm test cluster on this machine (no systemd needed), for exercising the
# pipeline's `-profile ncc` (SLURM executor, gpu/cpu partitions) without a real cluster.
#
#   scripts/slurm-cluster.sh start    install (if missing) + configure + start munged/slurmctld/slurmd,
#                                     then wait until the node is idle. Idempotent: a second start
#                                     only re-checks and waits for the node.
#   scripts/slurm-cluster.sh stop     stop slurmd, slurmctld and munged by their PID files.
#   scripts/slurm-cluster.sh status   show daemons and node state (exit 0 only if all are up and ready).
#
# The node is the local host (hostname -s, 127.0.0.1) with its real CPU count and ~95 % of the memory
# that `slurmd -C` reports, and one FAKE A100: gres gpu:a100:1 backed by /dev/fake-nvidia0, a symlink
# to /dev/null, so that `sbatch -p gpu --gres=gpu:a100:1` gets CUDA_VISIBLE_DEVICES=0 (no real GPU).
# Partitions: cpu (default) and gpu, both MaxTime=INFINITE; EnforcePartLimits=ALL rejects impossible
# requests (e.g. --mem larger than the node) at submit time, as a real cluster does.
#
# Must run as root. Environment overrides:
#   SLURM_CLUSTER_READY_TIMEOUT   seconds to wait for the node to become ready (default 60)
#   SLURM_CLUSTER_MEM_PERCENT     percentage of slurmd -C RealMemory to configure (default 95)
set -euo pipefail

readonly CONF_DIR=/etc/slurm
readonly SLURM_CONF=$CONF_DIR/slurm.conf
readonly GRES_CONF=$CONF_DIR/gres.conf
readonly LOG_DIR=/var/log/slurm
readonly CTLD_SPOOL=/var/spool/slurmctld
readonly SLURMD_SPOOL=/var/spool/slurmd
readonly CTLD_PID=/run/slurmctld.pid
readonly SLURMD_PID=/run/slurmd.pid
readonly MUNGE_RUN=/run/munge
readonly MUNGE_PID=$MUNGE_RUN/munged.pid
readonly MUNGE_KEY=/etc/munge/munge.key
readonly FAKE_GPU=/dev/fake-nvidia0
readonly LOCK=/run/slurm-cluster.lock
readonly PACKAGES=(slurmctld slurmd slurm-client munge)
READY_TIMEOUT=${SLURM_CLUSTER_READY_TIMEOUT:-60}
MEM_PERCENT=${SLURM_CLUSTER_MEM_PERCENT:-95}

NODE=$(hostname -s)
readonly NODE

log() { printf '[slurm-cluster] %s\n' "$*"; }
die() { printf '[slurm-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 {start|stop|status}" >&2
    exit 2
}

# --- process helpers ---------------------------------------------------------------------------

# pid_of NAME PIDFILE: print the PID if PIDFILE names a live process whose command is NAME.
pid_of() {
    local name=$1 pidfile=$2 pid comm
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
    echo "$pid"
}

is_running() { pid_of "$1" "$2" >/dev/null; }

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 pid i
    if ! pid=$(pid_of "$name" "$pidfile"); then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    log "$name: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "$name: still alive after 15 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# elapsed T0: seconds since T0 (an $EPOCHREALTIME value), one decimal.
elapsed() {
    local now=$EPOCHREALTIME
    # EPOCHREALTIME uses the locale's decimal separator
    LC_ALL=C awk -v a="${1/,/.}" -v b="${now/,/.}" 'BEGIN { printf "%.1f", b - a }'
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

# --- install & configure -----------------------------------------------------------------------

packages_installed() {
    local p status
    for p in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) || return 1
        [[ $status == "install ok installed" ]] || return 1
    done
}

install_packages() {
    if packages_installed; then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    log "installing ${PACKAGES[*]} (apt-get update + install)"
    export DEBIAN_FRONTEND=noninteractive
    local aptlog
    aptlog=$(mktemp /tmp/slurm-cluster-apt.XXXXXX)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } >"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        die "apt-get update/install ${PACKAGES[*]} failed (full log: $aptlog)"
    fi
    rm -f "$aptlog"
    packages_installed || die "packages still missing after apt-get install"
    log "installed: $(dpkg-query -W -f='${Package} ${Version}  ' "${PACKAGES[@]}")"
}

ensure_munge_key() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
}

ensure_dirs() {
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    # Fake GPU device: must be a symlink to a character device; a regular file leaves
    # CUDA_VISIBLE_DEVICES empty in the job.
    if [[ ! -L $FAKE_GPU || $(readlink "$FAKE_GPU") != /dev/null ]]; then
        rm -f "$FAKE_GPU"
        ln -s /dev/null "$FAKE_GPU"
    fi
}

# Print the slurm.conf for this machine on stdout.
render_slurm_conf() {
    local hw cpus realmem mem
    hw=$(slurmd -C 2>/dev/null | head -n 1) || die "slurmd -C failed"
    cpus=$(grep -o 'CPUs=[0-9]*' <<<"$hw" | cut -d= -f2)
    realmem=$(grep -o 'RealMemory=[0-9]*' <<<"$hw" | cut -d= -f2)
    [[ -n $cpus && -n $realmem ]] || die "cannot parse 'slurmd -C' output: $hw"
    mem=$((realmem * MEM_PERCENT / 100))
    cat <<EOF
# Generated by scripts/slurm-cluster.sh -- single-node test cluster, do not edit by hand.
# slurmd -C: $hw
ClusterName=layerwise-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Timers: short, so a restarted slurmd is noticed quickly.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
# Scheduling: consumable cores + memory, schedule immediately.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
EnforcePartLimits=ALL
# No accounting.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# One fake A100 (see gres.conf).
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:a100:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
}

render_gres_conf() {
    cat <<EOF
# Generated by scripts/slurm-cluster.sh -- fake GPU: $FAKE_GPU is a symlink to /dev/null.
AutoDetect=off
Name=gpu Type=a100 File=$FAKE_GPU
EOF
}

# install_if_changed CONTENT DEST: write DEST only if it differs; return 0 if it changed.
install_if_changed() {
    local content=$1 dest=$2
    if [[ -f $dest ]] && [[ "$(cat "$dest")" == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" >"$dest.tmp"
    chmod 0644 "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    log "wrote $dest"
    return 0
}

# write_config SLURM_CONF_TEXT GRES_CONF_TEXT: return 0 if either file changed.
write_config() {
    local changed=1
    install_if_changed "$1" "$SLURM_CONF" && changed=0
    install_if_changed "$2" "$GRES_CONF" && changed=0
    return $changed
}

# --- daemons -----------------------------------------------------------------------------------

start_munged() {
    if is_running munged "$MUNGE_PID"; then
        log "munged: already running (pid $(pid_of munged "$MUNGE_PID"))"
    elif pgrep -x munged >/dev/null; then
        log "munged: already running (pid $(pgrep -x munged | head -n1), no pid file at $MUNGE_PID)"
    else
        log "munged: starting"
        runuser -u munge -- /usr/sbin/munged 9>&- || die "munged failed to start (see /var/log/munge/munged.log)"
    fi
    wait_for 10 bash -c 'munge -n | unmunge' || die "munge does not work (munge -n | unmunge)"
}

start_slurmctld() {
    local i
    if is_running slurmctld "$CTLD_PID"; then
        log "slurmctld: already running (pid $(pid_of slurmctld "$CTLD_PID"))"
    else
        log "slurmctld: starting"
        slurmctld -i 9>&- || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
    fi
    for ((i = 0; ; i++)); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
        # slurmctld daemonises before reading its state: a fatal config error shows up as a vanished process
        if ((i >= 4)) && ! pgrep -x slurmctld >/dev/null; then
            tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
            die "slurmctld exited during start-up (see $LOG_DIR/slurmctld.log above)"
        fi
        if ((i >= 60)); then
            tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
            die "slurmctld does not answer 'scontrol ping' after 30 s"
        fi
        sleep 0.5
    done
}

start_slurmd() {
    if is_running slurmd "$SLURMD_PID"; then
        log "slurmd: already running (pid $(pid_of slurmd "$SLURMD_PID"))"
    else
        log "slurmd: starting"
        slurmd 9>&- || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
    fi
}

# Base state of the node, lower case, without the *~#%$@+ flags (e.g. idle, mixed, drained, unknown).
node_state() {
    scontrol show node "$NODE" 2>/dev/null | grep -o 'State=[A-Z_+*~#%$@!^-]*' | head -n1 | cut -d= -f2
}

node_reason() {
    scontrol show node "$NODE" 2>/dev/null | sed -n 's/^ *Reason=//p'
}

wait_ready() {
    local t0=$SECONDS state resumed=0 inval_since=
    log "waiting up to ${READY_TIMEOUT}s for node $NODE to become idle"
    while :; do
        state=$(node_state || true)
        case $state in
            IDLE | MIXED | ALLOCATED | COMPLETING | IDLE+* | MIXED+* | ALLOCATED+*)
                # a node flagged drain/fail/not-responding is not ready
                if [[ $state != *DRAIN* && $state != *FAIL* && $state != *NOT_RESPONDING* && $state != *'*'* ]]; then
                    log "node $NODE is ${state,,} ($(sinfo -h -o '%P=%t' | tr '\n' ' '))"
                    return 0
                fi
                ;;
        esac
        # INVALID_REG can linger from the saved state until slurmd re-registers: allow 3 s
        if [[ $state == *INVAL* ]]; then
            inval_since=${inval_since:-$SECONDS}
        else
            inval_since=
        fi
        if [[ -n $inval_since ]] && ((SECONDS - inval_since >= 3)); then
            scontrol show node "$NODE" >&2 || true
            die "node $NODE is INVALID (reason: $(node_reason)); slurm.conf asks for more than slurmd reports"
        fi
        if [[ ($state == *DRAIN* || $state == DOWN*) && $state != *INVAL* ]] && ((resumed == 0)) && is_running slurmd "$SLURMD_PID"; then
            # Typical after a restart (e.g. 'Kill task failed', 'Node unexpectedly rebooted').
            log "node $NODE is ${state,,} (reason: $(node_reason)); trying state=resume"
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
            resumed=1
        fi
        if ((SECONDS - t0 >= READY_TIMEOUT)); then
            scontrol show node "$NODE" >&2 || true
            tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
            die "node $NODE not ready after ${READY_TIMEOUT}s (state: ${state:-unknown})"
        fi
        sleep 0.5
    done
}

cmd_start() {
    local t0=$EPOCHREALTIME restart=0 conf gres
    [[ $EUID -eq 0 ]] || die "must run as root"
    install_packages
    ensure_dirs
    ensure_munge_key
    # rendered outside any `if` so that set -e catches a failing `slurmd -C`
    conf=$(render_slurm_conf)
    gres=$(render_gres_conf)
    if write_config "$conf" "$gres"; then
        if is_running slurmctld "$CTLD_PID" || is_running slurmd "$SLURMD_PID"; then
            log "configuration changed while running: restarting slurmd and slurmctld"
            restart=1
        fi
    else
        log "configuration unchanged ($SLURM_CONF, $GRES_CONF)"
    fi
    if ((restart)); then
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
    fi
    start_munged
    start_slurmctld
    start_slurmd
    wait_ready
    log "cluster ready: partitions cpu (default) and gpu, node $NODE with gres gpu:a100:1 (fake)"
    log "start took $(elapsed "$t0") s"
}

cmd_stop() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    log "stopped"
}

cmd_status() {
    local ok=0 name pidfile pid
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_PID ;;
            slurmctld) pidfile=$CTLD_PID ;;
            slurmd) pidfile=$SLURMD_PID ;;
        esac
        if pid=$(pid_of "$name" "$pidfile"); then
            log "$name: running (pid $pid)"
        else
            log "$name: not running"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null && is_running slurmctld "$CTLD_PID"; then
        sinfo -o '%P %a %l %D %t %c %m %G %N' || ok=1
        log "node $NODE: state=$(node_state || echo '?') reason=$(node_reason || true)"
        case $(node_state || true) in
            IDLE | MIXED | ALLOCATED | COMPLETING) ;;
            *) ok=1 ;;
        esac
    fi
    return $ok
}

main() {
    [[ $# -eq 1 ]] || usage
    case $1 in
        start | stop)
            # Serialise concurrent start/stop invocations. The daemons are started with 9>&-:
            # munged does not close inherited descriptors and would hold the lock forever.
            exec 9>"$LOCK"
            flock -w 120 9 || die "another slurm-cluster.sh is holding $LOCK"
            "cmd_$1"
            ;;
        status) cmd_status ;;
        *) usage ;;
    esac
}

main "$@"
