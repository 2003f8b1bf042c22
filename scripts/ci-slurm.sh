#!/usr/bin/env bash
# Run a command (the test suite) with the local Slurm + SkyPilot API server up, and stop them
# afterwards whatever happens (success, failure, Ctrl-C). For CI:
#
#   ./fleet setup
#   scripts/ci-slurm.sh ./fleet test -q
#
# `up` failing fails the run (the SkyPilot tests must run for real in CI); set
# ARF_CI_SLURM=optional to go on without it (those tests then skip and say why).
# ARF_SLURM_EXCLUSIVE=1 tells the tests the local Slurm and SkyPilot state are theirs alone, so
# the teardown test also checks that `sky status` and `squeue` are completely empty.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: scripts/ci-slurm.sh COMMAND [ARGS...]" >&2; exit 2; }

stopped=0
stop() {
  [ $stopped = 1 ] && return
  stopped=1
  echo "== local Slurm: down" >&2
  scripts/local-slurm.sh down --all-clusters || echo "== local Slurm: down reported an error" >&2
}
trap stop EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
if scripts/local-slurm.sh up; then
  echo "== local Slurm + SkyPilot API server up in $(( $(date +%s) - start )) s" >&2
  export ARF_SLURM_EXCLUSIVE=${ARF_SLURM_EXCLUSIVE:-1}
elif [ "${ARF_CI_SLURM:-required}" = optional ]; then
  echo "== local Slurm could not start: the SkyPilot tests will be skipped" >&2
else
  echo "== local Slurm could not start (set ARF_CI_SLURM=optional to run without it)" >&2
  exit 1
fi
"$@"
