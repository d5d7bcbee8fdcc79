#!/usr/bin/env bash
# One working session of issue 22's long training on this project's CPU machine, which may be
# replaced between sessions with everything outside the repository lost (docs/claims.md).
# The committed records are the only state that survives: analysis/claims_sweep.json (the
# claims sweep's finished rungs) and training/zoo_progress/ (the zoo's e2e ladders as figures).
#
#   bash tools/cpu_session.sh restore      the records into the run folders (a new machine;
#                                          on a surviving one nothing is taken twice)
#   bash tools/cpu_session.sh zoo [N]      N (default 2) single-thread build_zoo processes on
#                                          the zoo's e2e ladders, 5 trained together in each
#   bash tools/cpu_session.sh claims POINTS [args]   one single-thread claims process
#   bash tools/cpu_session.sh ladders SETS LAYERS   one single-thread build_zoo process on the
#                                          named e2e ladders only, all trained together (e.g.
#                                          `ladders sae_e2e,sae_e2e_ds 2`, then
#                                          `ladders skip_transcoder_e2e 2` beside it); it stops
#                                          once they have ended or are taken
#   bash tools/cpu_session.sh stop         SIGINT to every worker (each writes its checkpoint)
#                                          and wait for them to exit
#   bash tools/cpu_session.sh status       the workers and their logs' latest lines
#   bash tools/cpu_session.sh record       the zoo's e2e ladders and the sweep's results back
#                                          into the committed records, to commit
#   bash tools/cpu_session.sh beside CMD...  CMD (say, some tests) at low priority beside the
#                                          workers, taking what they leave ($BESIDE_NICE,
#                                          default 5; 19 leaves CMD almost nothing)
#
# Folders: $RUNS (default /work/zoo_runs), $CLAIMS (default /work/claims_runs/cached), logs in
# $LOGS (default /work/logs); `stop` signals the processes $WORKERS_MATCH (pgrep -f) matches.
# Workers run detached (setsid), so they outlive the shell. Run it with the project's
# environment active (`sparse-circuits` and its `python` on PATH).
set -euo pipefail
CALLER_DIR="$PWD"  # `beside` runs its command where it was called from
cd "$(dirname "$0")/.."
RUNS="${RUNS:-/work/zoo_runs}"
CLAIMS="${CLAIMS:-/work/claims_runs/cached}"
LOGS="${LOGS:-/work/logs}"
E2E_SETS=sae_e2e,sae_e2e_ds,skip_transcoder_e2e
# one thread a process: two processes on two cores train more than one with two threads
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

detached() {  # detached LOGNAME COMMAND...: run COMMAND in its own session, output to the log
  local log="$LOGS/$1.log"
  shift
  mkdir -p "$LOGS"
  # Job control on: without it bash starts a background command with SIGINT ignored, and the
  # worker then ignores `stop` everywhere outside its training loop (setup, a rung's evaluation),
  # where the loop's own handler is not installed (seen 2026-12-07).
  set -m
  setsid nohup "$@" >>"$log" 2>&1 </dev/null &
  set +m
  echo "started $* (log: $log)"
}

# what `stop` signals (a test narrows it to its own stand-in) and how often it looks again
WORKERS_MATCH="${WORKERS_MATCH:-training.build_zoo --stage train|sparse-circuits claims --out}"
STOP_POLL="${STOP_POLL:-5}"
workers() { pgrep -f "$WORKERS_MATCH" || true; }
ignores_int() {  # ignores_int PID: bit 1 of the process's SigIgn mask is SIGINT
  local mask
  mask=$(awk '/^SigIgn/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$mask" ] && (( 0x$mask & 2 ))
}

case "${1:-}" in
  restore)
    sparse-circuits claims --out "$CLAIMS" --merge analysis/claims_sweep.json --quiet
    python -m training.build_zoo --stage merge --runs "$RUNS" --transfer training/zoo_progress
    ;;
  zoo)
    for i in $(seq 1 "${2:-2}"); do
      # each process claims the next group of ladders that no other process holds
      detached "zoo$i" python -m training.build_zoo --stage train --runs "$RUNS" \
        --sets "$E2E_SETS" --together 5 --claims-runs "$CLAIMS"
      sleep 20
    done
    ;;
  claims)
    points="${2:?a --points pattern, e.g. braun/e2e_topk_k16,braun/e2e_ds_topk_k16}"
    shift 2
    detached "claims" sparse-circuits claims --out "$CLAIMS" --points "$points" "$@"
    ;;
  ladders)
    sets="${2:?comma-separated e2e sets, e.g. sae_e2e,sae_e2e_ds}"
    layers="${3:?comma-separated layers, e.g. 2}"
    n=$(( $(tr ',' '\n' <<<"$sets" | grep -c .) * $(tr ',' '\n' <<<"$layers" | grep -c .) ))
    detached "ladders_${sets//,/+}_$layers" python -m training.build_zoo --stage train \
      --runs "$RUNS" --sets "$sets" --layers "$layers" --together "$n" --claims-runs "$CLAIMS"
    ;;
  stop)
    dropped=()  # workers that ignore SIGINT now: it reaches them only once their loop catches it
    for pid in $(workers); do
      if ignores_int "$pid"; then
        echo "worker $pid ignores SIGINT outside its training loop: it stops once inside it" >&2
        dropped+=("$pid")
      else
        kill -INT "$pid" 2>/dev/null || true
      fi
    done
    while [ -n "$(workers)" ]; do
      sleep "$STOP_POLL"
      waiting=()
      for pid in "${dropped[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then continue; fi
        # once it catches SIGINT, one is enough: its handler then ignores SIGINT again
        if ignores_int "$pid"; then waiting+=("$pid"); else kill -INT "$pid" 2>/dev/null || true; fi
      done
      dropped=("${waiting[@]}")
    done
    echo "workers stopped"
    ;;
  status)
    # each worker: its command, how long it has run, whether SIGINT reaches it now, and the
    # last line of each log written in the last hour (the heartbeats come every 10 minutes)
    for pid in $(workers); do
      sigint="reaches it"
      if ignores_int "$pid"; then sigint="ignored (stop waits for its loop)"; fi
      echo "worker $pid, up $(ps -o etime= -p "$pid" | tr -d ' '), SIGINT: $sigint"
      echo "  $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    done
    [ -n "$(workers)" ] || echo "no workers"
    find "$LOGS" -name '*.log' -mmin -60 2>/dev/null | sort | while read -r log; do
      echo "$(basename "$log"): $(tail -n 1 "$log")"
    done
    ;;
  record)
    python -m training.build_zoo --stage record --runs "$RUNS" --transfer training/zoo_progress \
      --sets "$E2E_SETS"
    sparse-circuits claims --out "$CLAIMS" --report-only --export analysis/claims_sweep.json \
      --quiet
    python -m analysis.zoo_ladders training/zoo_staged/ladders.json \
      training/zoo_progress/zoo_ladders.json
    python -m analysis.zoo_pairs training/zoo_staged/ladders.json \
      training/zoo_progress/zoo_ladders.json
    ;;
  beside)
    shift
    cd "$CALLER_DIR"
    # The workers run in sessions of their own (setsid), and with the kernel's autogroups
    # (/proc/sys/kernel/sched_autogroup_enabled) the scheduler first shares the CPU equally
    # between sessions and only then reads nice: a `nice -n 19` test took a third of the
    # workers' time here (2026-12-07). A new session whose autogroup is niced does not.
    exec setsid --wait bash -c \
      'echo "${BESIDE_NICE:-5}" >/proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' _ "$@"
    ;;
  *)
    sed -n '2,29p' "$0"
    exit 2
    ;;
esac
