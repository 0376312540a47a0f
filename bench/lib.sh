# Shared by the bench/*.sh scripts: checking this project's CLI and the peer tools, making the
# scratch directory, and the four fio workloads of the single-job benchmarks. Sourced after `here`
# is set (the bench directory) and `set -euo pipefail`.

# bench_ploop : checks $PLOOP (a path to this project's CLI, never Debian's /usr/sbin/ploop) and
# makes it absolute; exits 2 otherwise
bench_ploop() {
  [[ -x $PLOOP && $PLOOP == */* ]] || { echo "PLOOP=$PLOOP: not an executable path (build the ploop-cli target first)" >&2; exit 2; }
  PLOOP=$(realpath "$PLOOP")
  [[ $PLOOP != /usr/sbin/ploop ]] || { echo "PLOOP is Debian's OpenVZ ploop, not this project's" >&2; exit 2; }
}

# bench_need TOOL... : exits 2 naming the first tool not on PATH
bench_need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$t not found" >&2; exit 2; }
  done
}

# bench_scratch NAME : sets `scratch` to a new directory under $SCRATCH (NAME.XXXXXX) or, by
# default, under bench/ (on the repository's file system); warns when it is on tmpfs
bench_scratch() {
  if [[ -n ${SCRATCH:-} ]]; then
    mkdir -p "$SCRATCH"
    scratch=$(mktemp -d "$SCRATCH/$1.XXXXXX")
  else
    scratch=$(mktemp -d "$here/.scratch.XXXXXX")
  fi
  if [[ $(stat -f -c %T "$scratch") == tmpfs ]]; then
    echo "warning: $scratch is on tmpfs: the figures are those of memory, not of a disk" >&2
  fi
}

# bench_params WORKLOAD : "BS QD RW UNIT" of the four fio workloads the single-job benchmarks
# share (4 KiB random at QD 32, 1 MiB sequential at QD 8; UNIT is what is compared)
bench_params() {
  case $1 in
    randread)  echo "4096 32 randread iops" ;;
    randwrite) echo "4096 32 randwrite iops" ;;
    seqread)   echo "1048576 8 read mibps" ;;
    seqwrite)  echo "1048576 8 write mibps" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}
