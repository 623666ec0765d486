#!/usr/bin/env bash
# N replicas of the app behind nginx on one machine (docs/deployment.md).
#
#   bash scripts/run_replicas.sh N STUDIES [extra start_server arguments, e.g. --conf device cuda:1]
#
# STUDIES: a shared studies folder or a PACS's DICOMweb URL. Replica n listens on
# 127.0.0.1:$((PORT + n)) and is named r<n>; r1 is the trainer (--conf trainer true), the
# others refuse fine-tunes and serve what r1 publishes to the shared MODEL_DIR. nginx listens
# on 127.0.0.1:PORT (clients connect there). Ctrl-C stops everything.
# Environment: PORT (8000), MODEL_DIR (apps/medsam2/model), RUN_DIR (./replicas-run: logs,
# each replica's DICOMweb cache, nginx's folder), GPUS (e.g. "0 1": replica n gets device
# cuda:<the n-th, round robin>; unset: --conf device as given or auto).
# A replica that exits is started again after RESTART_S seconds (5): meanwhile nginx sends its
# studies to the others, and they come back to it once it answers. A restarted replica starts at
# lower CPU priority (nice 10: the survivors' clicks come first while it loads; its compiled
# runtime comes from model_dir/runtime-cache) and is set back to normal once it answers (where
# this user may raise priority again: root, or RLIMIT_NICE; otherwise it stays at nice 10 and
# says so). TERM or Ctrl-C stops everything at once, whatever the restart delay.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ $# -lt 2 ]; then
    sed -n 2,12p "$0"; exit 2
fi
N=$1; STUDIES=$2; shift 2
PORT=${PORT:-8000}
MODEL_DIR=${MODEL_DIR:-apps/medsam2/model}
RUN_DIR=${RUN_DIR:-replicas-run}
read -r -a GPU_LIST <<< "${GPUS:-}"
mkdir -p "$RUN_DIR"
command -v nginx >/dev/null || { echo "nginx not found (Debian: apt-get install nginx)" >&2; exit 1; }

RESTART_S=${RESTART_S:-5}
pids=()
stop_all() {  # each supervisor stops its replica; then nginx
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait
}
trap stop_all EXIT INT TERM

# every thread of process $1 back to nice $2 (threads are niced one by one on Linux)
renice_all() {
    local task ok=0
    for task in /proc/"$1"/task/*; do
        renice -n "$2" -p "${task##*/}" >/dev/null 2>&1 || ok=1
    done
    return $ok
}

# one replica, started again whenever it exits (a crash, an out-of-memory kill); waits are
# in the background (sleep & wait) so that TERM is answered at once
supervise() {
    local n=$1 port=$2 child="" pause="" nice=0
    shift 2
    trap 'kill "$child" "$pause" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
    while true; do
        MONAI_LABEL_DICOMWEB_CACHE_PATH="$RUN_DIR/cache_r$n" \
            nice -n "$nice" .venv/bin/monailabel start_server "$@" >> "$RUN_DIR/r$n.log" 2>&1 &
        child=$!
        if [ "$nice" != 0 ]; then  # back to normal priority once it answers
            until curl -sf "http://127.0.0.1:$port/info/" >/dev/null || ! kill -0 "$child" 2>/dev/null; do
                sleep 1 & pause=$!; wait "$pause"
            done
            if kill -0 "$child" 2>/dev/null && ! renice_all "$child" 0; then
                echo "replica r$n answers; it stays at nice $nice (this user may not raise priority)" >&2
            fi
        fi
        wait "$child" || true
        echo "$(date -u +%FT%TZ) replica r$n exited; starting it again in ${RESTART_S} s (log $RUN_DIR/r$n.log)" >&2
        sleep "$RESTART_S" & pause=$!
        wait "$pause" || true
        nice=10
    done
}

replicas=()
for n in $(seq 1 "$N"); do
    port=$((PORT + n))
    trainer=false; [ "$n" = 1 ] && trainer=true
    device=()
    if [ ${#GPU_LIST[@]} -gt 0 ]; then device=(--conf device "cuda:${GPU_LIST[$(( (n - 1) % ${#GPU_LIST[@]} ))]}"); fi
    supervise "$n" "$port" --app apps/medsam2 --studies "$STUDIES" --host 127.0.0.1 --port "$port" \
        --conf model_dir "$MODEL_DIR" --conf replica_name "r$n" --conf trainer "$trainer" --conf trainer_name r1 \
        "${device[@]}" "$@" &
    pids+=($!)
    replicas+=(--replica "r$n=127.0.0.1:$port")
    echo "replica r$n (trainer: $trainer) on 127.0.0.1:$port, log $RUN_DIR/r$n.log"
done

for n in $(seq 1 "$N"); do  # nginx marks a replica that refuses connections as down: wait for each
    until curl -sf "http://127.0.0.1:$((PORT + n))/info/" >/dev/null; do sleep 1 & wait $!; done
done
user=(); [ "$(id -u)" = 0 ] && user=(--user root)
.venv/bin/python apps/medsam2/deploy/render_nginx.py --listen "127.0.0.1:$PORT" "${replicas[@]}" \
    --trainer "127.0.0.1:$((PORT + 1))" --out "$RUN_DIR/nginx" "${user[@]}" >/dev/null
echo "nginx on http://127.0.0.1:$PORT (configuration $RUN_DIR/nginx/nginx.conf)"
nginx -p "$RUN_DIR/nginx" -c "$(realpath "$RUN_DIR/nginx/nginx.conf")" -g 'daemon off;' &
pids+=($!)
wait "$!" || true  # (a trap runs during wait, not during a foreground command)
echo "nginx ended; stopping the replicas" >&2
