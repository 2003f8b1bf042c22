#!/usr/bin/env bash
# A single-node Slurm on this machine that SkyPilot can launch REAL clusters on: no cloud account.
#
#   scripts/local-slurm.sh up [--offline|--online] [--no-api]
#   scripts/local-slurm.sh down [--all-clusters]
#   scripts/local-slurm.sh status
#
# `up` (root, Debian/Ubuntu; idempotent, ~10 s once packages are installed):
#   - installs slurm-wlm, munge, openssh-server, rsync when missing (apt);
#   - writes a one-node slurm.conf on 127.0.0.1 and starts munged, slurmctld, slurmd;
#   - starts OUR OWN sshd (own config + pid file) listening on loopback only, key login only,
#     with a dedicated key (~/.ssh/arf_local_slurm) authorised for root;
#   - writes SkyPilot's Slurm config ~/.slurm/config (Host alias `localcluster`);
#   - with --offline (default: auto = when astral.sh is unreachable) installs two stand-ins that
#     SkyPilot's node setup needs without internet: `curl https://astral.sh/uv/install.sh` gets a
#     PyPI-installed uv, and `uv venv --python 3.10` uses the local Python 3.11;
#   - starts SkyPilot's API server and enables the Slurm infra (`sky check slurm`), unless --no-api.
# `down`: `sky down` on the fleet's clusters (names starting with $ARF_SKY_PREFIX-, default `arf-`;
#   --all-clusters: every cluster), `sky api stop`, ends SkyPilot's ssh multiplexer sessions,
#   cancels what is left in our Slurm queue, and stops the daemons by pid file. Packages and
#   config files stay (the next `up` is quick).
#
# Environment:
#   SKY_VENV            venv holding skypilot==0.14.1 (default: ./.venv of this repo)
#   LOCAL_SLURM_CPUS    CPUs the node advertises (default: max(nproc, 4): over-commit allowed)
#   LOCAL_SLURM_MEM_MB  memory the node advertises (default 8000)
#   LOCAL_SLURM_SELECT  SelectTypeParameters (default CR_Core: memory is not a consumable, so the
#                       job queued ahead on a cluster can start beside the running one, as with
#                       fractional GPUs on Kubernetes/clouds; CR_Core_Memory: SkyPilot's job steps
#                       ask for all the allocation's memory (--mem=0) and run one at a time)
#   LOCAL_SLURM_SSH_PORT  port of our loopback sshd (default 22)
#   SKY_OFFLINE_DIR     where the offline stand-ins live (default /opt/arf-skyoffline)
#   ARF_SKY_PREFIX      cluster-name prefix `down` removes (default arf)
#
# The stand-ins lean on SkyPilot internals: pin skypilot==0.14.1 and re-check them on upgrade.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SKY_VENV=${SKY_VENV:-$REPO/.venv}
CPUS=${LOCAL_SLURM_CPUS:-$(n=$(nproc); [ "$n" -lt 4 ] && echo 4 || echo "$n")}
MEM_MB=${LOCAL_SLURM_MEM_MB:-8000}
SELECT=${LOCAL_SLURM_SELECT:-CR_Core}
SSH_PORT=${LOCAL_SLURM_SSH_PORT:-22}
OFF=${SKY_OFFLINE_DIR:-/opt/arf-skyoffline}
PREFIX=${ARF_SKY_PREFIX:-arf}
SSHD_CONF=/etc/ssh/arf-local-slurm-sshd.conf
SSHD_PID=/run/arf-local-slurm-sshd.pid
KEY=$HOME/.ssh/arf_local_slurm
PIDS=(/run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid)
API_URL=http://127.0.0.1:46580/api/health

log() { printf '[local-slurm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
sky_bin() { [ -x "$SKY_VENV/bin/sky" ] && echo "$SKY_VENV/bin/sky"; }
api_up() { command -v curl >/dev/null && curl -fsS --max-time 3 "$API_URL" >/dev/null 2>&1; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
}

start_slurm() {
  local host; host=$(hostname -s)
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then mungekey -c -f; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; fi
  local conf; conf=$(cat <<EOF
# Written by autoresearch-fleet scripts/local-slurm.sh: one node on 127.0.0.1, for SkyPilot tests.
ClusterName=localcluster
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=${SELECT}
DefMemPerCPU=512
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=60
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
  local changed=0
  if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > /etc/slurm/slurm.conf; changed=1
  fi
  alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  if [ $changed = 1 ]; then   # some settings (select parameters, node size) need a restart
    stop_pidfile /run/slurm/slurmd.pid
    stop_pidfile /run/slurm/slurmctld.pid
  fi
  alive /run/slurm/slurmctld.pid || /usr/sbin/slurmctld
  alive /run/slurm/slurmd.pid || /usr/sbin/slurmd
  local state=
  for _ in $(seq 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle*|mix*|alloc*) break ;; drain*|down*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;; esac
    sleep 1
  done
  case "$state" in idle*|mix*|alloc*) log "slurm up: node $host, $CPUS CPUs, ${MEM_MB} MB ($state)" ;;
    *) die "slurm node not ready (state '$state'); see /var/log/slurm/" ;; esac
}

start_sshd() {
  mkdir -p /run/sshd "$HOME/.ssh"; chmod 700 "$HOME/.ssh"
  ssh-keygen -A >/dev/null
  [ -f "$KEY" ] || ssh-keygen -t ed25519 -N "" -q -C arf-local-slurm -f "$KEY"
  touch "$HOME/.ssh/authorized_keys"; chmod 600 "$HOME/.ssh/authorized_keys"
  grep -qF "$(cat "$KEY.pub")" "$HOME/.ssh/authorized_keys" || cat "$KEY.pub" >> "$HOME/.ssh/authorized_keys"
  local setenv=""
  [ "$OFFLINE" = 1 ] && setenv="SetEnv SKY_OFFLINE_SHIM=$OFF/bin"
  cat > "$SSHD_CONF.new" <<EOF
# Written by autoresearch-fleet scripts/local-slurm.sh: loopback only, key login only.
Port $SSH_PORT
ListenAddress 127.0.0.1
PidFile $SSHD_PID
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_rsa_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding no
AllowTcpForwarding yes
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
$setenv
EOF
  mv "$SSHD_CONF.new" "$SSHD_CONF"
  /usr/sbin/sshd -t -f "$SSHD_CONF"
  if alive "$SSHD_PID"; then kill -HUP "$(cat "$SSHD_PID")"; else /usr/sbin/sshd -f "$SSHD_CONF"; fi
  # Login shells reset PATH; this puts the offline stand-ins first for sessions of our sshd only.
  cat > /etc/profile.d/zz-arf-sky-offline.sh <<'EOF'
if [ -n "${SKY_OFFLINE_SHIM:-}" ]; then PATH="$SKY_OFFLINE_SHIM:$PATH"; export PATH; fi
EOF
  mkdir -p "$HOME/.slurm"
  cat > "$HOME/.slurm/config" <<EOF
# SkyPilot's Slurm infra: the local single-node Slurm (autoresearch-fleet scripts/local-slurm.sh).
Host localcluster
  HostName 127.0.0.1
  Port $SSH_PORT
  User root
  IdentityFile $KEY
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
EOF
  chmod 600 "$HOME/.slurm/config"
  local ok=0
  for _ in $(seq 20); do   # a HUP'ed sshd re-executes itself: give it a moment to listen again
    if ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 -o LogLevel=ERROR -i "$KEY" -p "$SSH_PORT" root@127.0.0.1 \
        'bash --login -c "sinfo -h >/dev/null && echo ok"' >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  [ $ok = 1 ] || die "ssh to 127.0.0.1:$SSH_PORT failed (see: /usr/sbin/sshd -t -f $SSHD_CONF)"
  log "sshd up on 127.0.0.1:$SSH_PORT (pid $(cat "$SSHD_PID")); ~/.slurm/config written"
}

install_offline() {
  mkdir -p "$OFF/bin"
  if [ ! -x "$OFF/uvvenv/bin/uv" ]; then
    python3 -m venv "$OFF/uvvenv"
    "$OFF/uvvenv/bin/pip" install -q uv
  fi
  local py; py=$(command -v python3.11 || command -v python3)
  local ver; ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  cat > "$OFF/uv-wrapper" <<EOF
#!/bin/bash
# Stand-in installed as \$HOME/.local/bin/uv on the Slurm "nodes": never downloads a Python,
# and maps the Python 3.10 SkyPilot asks for to the local $ver.
export UV_PYTHON_DOWNLOADS=never
export UV_SYSTEM_CERTS=1 SSL_CERT_FILE=\${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
args=(); prev=
for a in "\$@"; do
  if [ "\$prev" = "--python" ] && [ "\$a" = "3.10" ]; then a="\${SKY_OFFLINE_PYTHON:-$ver}"; fi
  args+=("\$a"); prev="\$a"
done
exec $OFF/uvvenv/bin/uv "\${args[@]}"
EOF
  cat > "$OFF/bin/curl" <<EOF
#!/bin/bash
# Stand-in for curl on the Slurm "nodes": answers astral.sh's uv installer URL with a script
# that copies the offline uv; everything else goes to the real curl.
for a in "\$@"; do
  if [ "\$a" = "https://astral.sh/uv/install.sh" ]; then
    printf '%s\n' 'set -e' 'd="\${UV_INSTALL_DIR:-\$HOME/.local/bin}"' 'mkdir -p "\$d"' \\
      'cp $OFF/uv-wrapper "\$d/uv"' 'chmod +x "\$d/uv"' 'echo "offline uv installed at \$d/uv"'
    exit 0
  fi
done
exec /usr/bin/curl "\$@"
EOF
  chmod 755 "$OFF" "$OFF/bin" "$OFF/uv-wrapper" "$OFF/bin/curl"
  log "offline stand-ins in $OFF"
}

start_api() {
  local sky; sky=$(sky_bin) || die "no skypilot in $SKY_VENV (set SKY_VENV)"
  if api_up; then log "SkyPilot API server already up"; else
    "$sky" api start >/dev/null
  fi
  # Enables the Slurm infra in SkyPilot's state (the optimizer only considers enabled infras).
  "$sky" check slurm >/dev/null 2>&1 || { "$sky" check slurm || true; die "sky check slurm failed"; }
  log "SkyPilot API server up; Slurm infra enabled"
}

# ---- down -------------------------------------------------------------------------------------
down_clusters() {
  local all=$1 py="$SKY_VENV/bin/python"
  api_up || return 0
  [ -x "$py" ] || return 0
  ARF_PREFIX="$PREFIX" ARF_ALL="$all" timeout 600 "$py" - <<'EOF' || log "sky down reported an error (see above)"
import os, sky
prefix, everything = os.environ["ARF_PREFIX"] + "-", os.environ["ARF_ALL"] == "1"
names = [r.name if hasattr(r, "name") else r["name"] for r in sky.get(sky.status())]
ours = [n for n in names if everything or n.startswith(prefix)]
reqs = [(n, sky.down(n)) for n in ours]
for n, rid in reqs:
    try:
        sky.get(rid); print(f"[local-slurm] sky down {n}: ok")
    except Exception as e:  # report and go on: the rest must still be stopped
        print(f"[local-slurm] sky down {n}: {type(e).__name__}: {e}")
EOF
}

end_ssh_multiplexers() {
  # SkyPilot keeps ssh ControlMaster sessions (sockets under /tmp/sky_ssh_*); end each master.
  local s
  for s in /tmp/sky_ssh_*/*/* /tmp/skypilot_ssh_*/*; do
    [ -S "$s" ] || continue
    ssh -o ControlPath="$s" -O exit dummy >/dev/null 2>&1 || true
  done
}

stop_pidfile() {  # pidfile [children-too]
  local f=$1 pid
  alive "$f" || return 0
  pid=$(cat "$f")
  if [ "${2:-}" = children ]; then
    # sessions of our sshd (e.g. a left-over `sshd: root@notty` of SkyPilot's multiplexer)
    local c; for c in $(pgrep -P "$pid" || true); do kill "$c" 2>/dev/null || true; done
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

cmd_down() {
  local all=0
  for a in "$@"; do case "$a" in --all-clusters) all=1 ;; *) die "unknown option $a" ;; esac; done
  down_clusters "$all"
  local sky; if sky=$(sky_bin) && api_up; then "$sky" api stop >/dev/null 2>&1 || true; log "SkyPilot API server stopped"; fi
  end_ssh_multiplexers
  if alive /run/slurm/slurmctld.pid; then
    local left; left=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${left// /}" ]; then log "cancelling Slurm jobs left: $left"; scancel $left 2>/dev/null || true; sleep 2; fi
  fi
  stop_pidfile "$SSHD_PID" children
  stop_pidfile /run/slurm/slurmd.pid
  stop_pidfile /run/slurm/slurmctld.pid
  stop_pidfile /run/munge/munged.pid
  log "down"
}

cmd_status() {
  local rc=0 f
  for f in "${PIDS[@]}" "$SSHD_PID"; do
    if alive "$f"; then echo "running  $(basename "$f" .pid) pid $(cat "$f")"; else echo "stopped  $(basename "$f" .pid)"; rc=1; fi
  done
  if alive /run/slurm/slurmctld.pid; then sinfo 2>/dev/null || true; echo "-- squeue"; squeue 2>/dev/null || true; fi
  [ -f "$HOME/.slurm/config" ] && echo "~/.slurm/config present" || { echo "~/.slurm/config missing"; rc=1; }
  if api_up; then echo "SkyPilot API server: up ($API_URL)"; else echo "SkyPilot API server: down"; fi
  return $rc
}

cmd_up() {
  OFFLINE=auto; local api=1
  for a in "$@"; do case "$a" in
    --offline) OFFLINE=1 ;; --online) OFFLINE=0 ;; --no-api) api=0 ;; *) die "unknown option $a" ;;
  esac; done
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"
  install_packages
  if [ "$OFFLINE" = auto ]; then
    if curl -fsS --max-time 5 -o /dev/null https://astral.sh/uv/install.sh 2>/dev/null; then OFFLINE=0; else OFFLINE=1; fi
    log "astral.sh $([ $OFFLINE = 1 ] && echo unreachable: using offline stand-ins || echo reachable)"
  fi
  [ "$OFFLINE" = 1 ] && install_offline
  start_slurm
  start_sshd
  [ $api = 1 ] && start_api
  log "up"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
