#!/usr/bin/env bash
# The GPU campaign of issue 14 in one device call: machine facts, the CUDA tests, bench/latency.py's CUDA rows,
# the token choice inside the graph (bench/gpu_probe.py), training throughput and, with the time left, a quality run. Every result goes under $OUT (default ./gpu-out);
# $OUT/summary.md says how each step went and is rewritten after every step. It exits 0 once the summary is
# written, whatever failed, so that the results always come back. How to run it: docs/gpu.md.
#
#   bash bench/gpu_check.sh prepare                  # here, before the device calls: .wp/ wheel parts and data
#   bash bench/gpu_check.sh                          # on the GPU machine, the last of the part-carrying calls
#   OUT=/tmp/gpu-rehearsal bash bench/gpu_check.sh   # on a CPU machine: CUDA steps say "skipped: no CUDA"
#
# Environment: BUDGET_S (seconds for the whole script, default 400), STEPS (default "facts tests latency probe
# train quality"), TRAIN_SECONDS (each of the two training runs, default 60), LATENCY_SECONDS (per row, default 1),
# PROBE_SECONDS (per probe row, at most, default 0.5),
# QUALITY_SECONDS (at most, default: what the budget leaves), QUALITY_SET ("key=value ..." for the quality run),
# SMOKE (1: without CUDA, run the same code small on the CPU; 0: skip at once), PYTHON (default .venv/bin/python
# where there is one, else python3), RNNX_GPU_DATA (a training text; default .wp/tinyshakespeare.txt or
# ../shared/data/tinyshakespeare.txt), RNNX_GPU_CHECK_NO_CUDA=1 (behave as if there were no GPU).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

if [[ ${1:-} == prepare ]]; then
  set -e
  bash ../shared/tools/ort-gpu-parts.sh
  install -m 0644 ../shared/data/tinyshakespeare.txt .wp/tinyshakespeare.txt
  cat <<'EOF'

Prepared .wp/ (git-ignored). Now five device calls, back to back (the machine goes back ~30 s after a call):
  N = 0..3:  command "mkdir -p /tmp/parts && cp .wp/part_0N /tmp/parts/"   carry [".wp/part_0N"]
  last:      command "mkdir -p /tmp/parts && cp .wp/part_04 /tmp/parts/ && bash .wp/ort-gpu-install.sh &&
                      export PYTHONPATH=/tmp/site && bash bench/gpu_check.sh"
             carry [".wp/part_04", ".wp/NAME", ".wp/SHA256", ".wp/ort-gpu-install.sh", ".wp/tinyshakespeare.txt"]
             timeout_s 560
EOF
  exit 0
fi

BUDGET_S=${BUDGET_S:-400}
STEPS=${STEPS:-facts tests latency probe train quality}
TRAIN_SECONDS=${TRAIN_SECONDS:-60}
LATENCY_SECONDS=${LATENCY_SECONDS:-1}
PROBE_SECONDS=${PROBE_SECONDS:-0.5}
QUALITY_SECONDS=${QUALITY_SECONDS:-100000}
QUALITY_SET=${QUALITY_SET:-}
SMOKE=${SMOKE:-1}
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
rm -f "$OUT/cuda.json" "$OUT/summary.md"  # the steps read cuda.json: only this run's facts may write it
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rnnx-gpu.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SMOKE_FLAG=()
[[ $SMOKE == 1 ]] && SMOKE_FLAG=(--smoke)
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

labels=() statuses=() seconds=() details=()

record() {  # record LABEL STATUS SECONDS DETAIL
  labels+=("$1") statuses+=("$2") seconds+=("$3") details+=("$4")
  printf '[%4ds] %s: %s — %s\n' "$SECONDS" "$1" "$2" "$4"
  write_summary
}

write_summary() {
  local i key
  {
    echo "# rnnx GPU campaign (issue 14): summary"
    echo
    echo "Started $STARTED on ${HOSTNAME:-?}; $SECONDS s so far of a $BUDGET_S s budget. Python: $PYTHON."
    echo "Steps asked for: $STEPS. Logs: <step>.log; results: <step>.md and <step>.json."
    echo
    echo "| step | status | seconds | details |"
    echo "|---|---|---|---|"
    for i in "${!labels[@]}"; do
      echo "| ${labels[i]} | ${statuses[i]} | ${seconds[i]} | ${details[i]} |"
    done
    for key in facts tests latency probe train quality; do
      if [[ -f $OUT/$key.md ]]; then
        echo
        cat "$OUT/$key.md"
      fi
    done
  } >"$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
}

left() { echo $((BUDGET_S - SECONDS)); }

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# run_step KEY LABEL CAP_SECONDS ARGS...: the helper's step KEY, time-boxed to CAP or what the budget leaves
run_step() {
  local key=$1 label=$2 cap=$3 start=$SECONDS rc status detail limit
  shift 3
  limit=$(($(left) - 5))
  ((cap < limit)) && limit=$cap
  if ((limit < 10)); then
    record "$label" "skipped: no time left" 0 "$(left) s of the budget left"
    return
  fi
  rm -f "$OUT/$key.md" "$OUT/$key.json" "$OUT/$key.detail"  # nothing from an earlier run in the same $OUT
  timeout --kill-after=10 "$limit" "$PYTHON" bench/gpu_campaign.py "$key" --out "$OUT" --work "$WORK/$key" \
    --limit "$limit" "$@" >"$OUT/$key.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    75) status="skipped: no CUDA" ;;
    76) status="skipped: no tiny-shakespeare" ;;
    124 | 137) status="timed out (after $limit s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  detail="see $key.log"
  [[ -s $OUT/$key.detail ]] && detail=$(head -c 600 "$OUT/$key.detail")
  [[ $rc == 0 || $rc == 75 || $rc == 76 ]] || detail="$detail; last line of $key.log: $(tail -n 1 "$OUT/$key.log" | head -c 300 | tr '|' '/')"
  record "$label" "$status" $((SECONDS - start)) "$detail"
}

# the folder of the libcudnn.so.9 that came with torch's nvidia-* wheels, found without importing torch
TORCH_CUDNN_DIR='
import importlib.util, pathlib
spec = importlib.util.find_spec("torch")
site = pathlib.Path(spec.origin).parents[1] if spec and spec.origin else None
hits = sorted(site.glob("nvidia/**/libcudnn.so.9")) if site else []
print(hits[0].parent if hits else "")'

# onnxruntime-gpu (see docs/gpu.md) and the project, importable without network
setup() {
  local start=$SECONDS notes=()
  if [[ -d /tmp/site/onnxruntime ]]; then
    [[ :${PYTHONPATH:-}: == *:/tmp/site:* ]] || export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    notes+=("onnxruntime-gpu from /tmp/site")
  elif [[ -f /tmp/parts/part_04 && -f .wp/ort-gpu-install.sh ]]; then
    if timeout 240 bash .wp/ort-gpu-install.sh >"$OUT/ort-install.log" 2>&1; then
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      notes+=("onnxruntime-gpu installed from /tmp/parts into /tmp/site")
    else
      notes+=("onnxruntime-gpu install FAILED (ort-install.log)")
    fi
  else
    notes+=("no /tmp/site nor wheel parts: the onnxruntime already installed")
  fi
  # torch's own cuDNN first on the library path: onnxruntime otherwise loads the system's, and a torch built for
  # another version refuses it (first H200 run: "compiled against (9, 19, 0) but found runtime version (9, 14, 0)")
  local cudnn
  cudnn=$("$PYTHON" -c "$TORCH_CUDNN_DIR" 2>/dev/null || true)
  if [[ -n $cudnn ]]; then
    export LD_LIBRARY_PATH=$cudnn${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    notes+=("torch's cuDNN first on LD_LIBRARY_PATH ($cudnn)")
  fi
  local probe='import rnnx.runtime, rnnx.trainer, rnnx.export, onnxruntime' status=ok
  if "$PYTHON" -c "$probe" 2>"$OUT/setup.log"; then
    notes+=("rnnx importable as installed")
  elif "$PYTHON" -m pip install --no-deps --no-build-isolation -e . >>"$OUT/setup.log" 2>&1 &&
    "$PYTHON" -c "$probe" 2>>"$OUT/setup.log"; then
    notes+=("rnnx installed with pip -e")
  else  # no setuptools, or an externally managed Python: the packages by their import names, linked
    mkdir -p "$WORK/shim/rnnx"
    local pkg
    for pkg in trainer export runtime cli; do ln -s "$PWD/$pkg" "$WORK/shim/rnnx/$pkg"; done
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$WORK/shim
    notes+=("pip -e failed (setup.log): rnnx linked under $WORK/shim")
    if ! "$PYTHON" -c "$probe" >>"$OUT/setup.log" 2>&1; then
      status=failed
      notes+=("rnnx still does not import (setup.log)")
    fi
  fi
  local joined
  joined=$(printf '%s; ' "${notes[@]}")
  record "setup" "$status" $((SECONDS - start)) "${joined}PYTHONPATH=${PYTHONPATH:-(unset)}"
}

setup
if wanted facts; then run_step facts "0 machine facts" 60; fi
if wanted tests; then run_step tests "1 CUDA tests" 150 "${SMOKE_FLAG[@]}"; fi
if wanted latency; then run_step latency "2 CUDA latency" 150 --seconds "$LATENCY_SECONDS" "${SMOKE_FLAG[@]}"; fi
if wanted probe; then run_step probe "2b token choice in the graph" 90 --seconds "$PROBE_SECONDS" "${SMOKE_FLAG[@]}"; fi
if wanted train; then
  run_step train "3 training throughput" $((2 * TRAIN_SECONDS + 60)) --seconds "$TRAIN_SECONDS" "${SMOKE_FLAG[@]}"
fi
if wanted quality; then
  # shellcheck disable=SC2206  # QUALITY_SET is a list of key=value words
  settings=($QUALITY_SET)
  quality=$(($(left) - 50))
  ((QUALITY_SECONDS < quality)) && quality=$QUALITY_SECONDS
  if ((quality < 30)); then
    record "4 quality run" "skipped: no time left" 0 "$(left) s of the budget left"
  else
    run_step quality "4 quality run" $((quality + 45)) --seconds "$quality" "${SMOKE_FLAG[@]}" --set "${settings[@]}"
  fi
fi
write_summary
echo
cat "$OUT/summary.md"
exit 0
