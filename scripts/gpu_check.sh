#!/usr/bin/env bash
# Everything that needs a GPU, in one go (about 10 minutes on one H100/H200/A100):
#   bash scripts/gpu_check.sh [OUT_DIR]
# - the speed benchmark on CUDA: SAM 2.1 tiny and base+ at 1024 px, MedSAM2 (tiny at 512 px),
#   each beside MONAI Label's built-in task in the same run (random weights, seed 0: timing only);
#   compare tiny's slices per second with SAM 2's published 91 FPS on an A100;
# - the clinical-size benchmark on CUDA (200 slices, a 20-slice lesion; built-in, full protocol,
#   the default's exact stop), with a phantom checkpoint trained here for 3 minutes;
# - the CUDA tests: server, fine-tuning and inference paths (tests/test_cuda_paths.py and the
#   GPU-marked tests, which skip elsewhere).
# Needs the venv of `bash setup.sh --tests`. Writes JSON and logs to OUT_DIR (default gpu-check/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="apps/medsam2:."
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || { echo "no GPU (nvidia-smi failed)"; exit 1; }
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name())"

for preset in sam2.1_hiera_tiny sam2.1_hiera_base_plus medsam2; do
  "$PY" scripts/benchmark_speed.py --device cuda --preset "$preset" --slices 64 --repeats 3 --only-reference \
    --skip-roofline --precision-slices 0 --ahead-pause 0 --cpu-runtimes torch \
    --out "$OUT/speed_$preset.json" > "$OUT/speed_$preset.log" 2>&1
  echo "speed $preset: exit $?"; tail -n 12 "$OUT/speed_$preset.log"
done

"$PY" scripts/phantom_checkpoint.py --device cuda --minutes 3 --out "$OUT/phantom.pt" > "$OUT/phantom.log" 2>&1
echo "phantom checkpoint: exit $?"
"$PY" scripts/benchmark_clinical.py --device cuda --checkpoint "$OUT/phantom.pt" --slices 200 --span 20 \
  --out "$OUT/clinical.json" > "$OUT/clinical.log" 2>&1
echo "clinical: exit $?"; tail -n 6 "$OUT/clinical.log"

"$PY" -m pytest -q -rs tests/test_cuda_paths.py tests/test_distributed_training.py > "$OUT/tests.log" 2>&1
echo "CUDA tests: exit $?"; tail -n 15 "$OUT/tests.log"
