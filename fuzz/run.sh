#!/usr/bin/env bash
# Runs the fuzz targets (README.md "Running"), first making sure each target's corpus
# directory holds its seeds: a missing corpus/<target>/, or one without its seed-*
# files, is written again by make_seeds.py. What libFuzzer adds to corpus/<target>/
# stays on this machine (corpus/.gitignore keeps only seed-* tracked).
#
#   bash fuzz/run.sh seeds                  # only (re)create missing corpus dirs
#   bash fuzz/run.sh replay                 # every target once over its corpus (seconds)
#   bash fuzz/run.sh run TARGET [SECONDS]   # fuzz TARGET (default 600 s), log in TARGET.log
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets the stable
# compiler take its nightly-only flags. make_seeds.py needs python3, GNU tar, gzip,
# zstd, pzstd, xz and bzip2.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(manifest event filter unpack fleet_answer toc)
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

# A target's corpus is usable when its directory exists and holds at least one seed.
has_seeds() {
  compgen -G "corpus/$1/seed-*" >/dev/null
}

seeds() {
  local missing=()
  for t in "${TARGETS[@]}"; do
    has_seeds "$t" || missing+=("$t")
  done
  if ((${#missing[@]})); then
    echo "fuzz: writing the seeds of: ${missing[*]} (make_seeds.py)" >&2
    # make_seeds.py writes every target's seeds (fixed names, overwritten in place)
    # and leaves the grown files alone.
    python3 make_seeds.py >&2
  fi
  for t in "${TARGETS[@]}"; do
    has_seeds "$t" || { echo "fuzz: corpus/$t still has no seeds" >&2; exit 1; }
  done
}

usage() {
  sed -n '7,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd="${1:-}"
case "$cmd" in
  seeds)
    seeds
    ;;
  replay)
    seeds
    for t in "${TARGETS[@]}"; do
      cargo fuzz run "$t" "corpus/$t" -- -runs=0 -close_fd_mask=2
    done
    ;;
  run)
    target="${2:-}"
    secs="${3:-600}"
    [[ " ${TARGETS[*]} " == *" $target "* ]] || usage
    seeds
    # The unpack target's temp dirs go to memory when /dev/shm exists; the log is
    # piped (not redirected) so the target's RLIMIT_FSIZE cannot cut it.
    if [[ -d /dev/shm ]]; then export TMPDIR="${TMPDIR:-/dev/shm}"; fi
    status=0
    nice -n 10 cargo fuzz run "$target" "corpus/$target" -- \
      -max_total_time="$secs" -timeout=10 -close_fd_mask=2 -print_final_stats=1 \
      2>&1 | cat >"$target.log" || status=$?
    tail -n 20 "$target.log"
    # Non-zero: a finding (artifacts/<target>/) or a build error, in the log above.
    exit "$status"
    ;;
  *)
    usage
    ;;
esac
