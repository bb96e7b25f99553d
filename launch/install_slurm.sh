#!/usr/bin/env bash
# Installs a single-node Slurm from Debian's packages, for the dev cluster of launch/slurm_dev_cluster.sh.
#   sudo bash launch/install_slurm.sh                    # slurmctld, slurmd, client, munge, slurmdbd + MariaDB
#   MSPGT_SLURM_ACCOUNTING=0 bash launch/install_slurm.sh  # without accounting (no sacct: see the script)
# Debian/Ubuntu only (apt-get); needs root. Installs nothing when everything is already there.
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge)
commands=(slurmctld slurmd sinfo munged)
if [ "${MSPGT_SLURM_ACCOUNTING:-1}" = "1" ]; then
  packages+=(slurmdbd mariadb-server)
  commands+=(slurmdbd mariadbd)
fi

missing=0
for c in "${commands[@]}"; do
  command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$c" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = "0" ]; then
  echo "slurm dev cluster packages already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; install ${packages[*]} with your system's package manager" >&2
  exit 1
fi
if [ "$(id -u)" != "0" ]; then
  echo "error: installing packages needs root; run: sudo bash $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "installed: ${packages[*]}"
