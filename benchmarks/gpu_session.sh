#!/usr/bin/env bash
# The GPU benchmarks as one prepared run for a lent GPU machine whose time is short (about 10
# minutes a command): issue 17's GPU targets first, each part under its own time limit inside one
# overall deadline, and every result written as soon as it is measured, so that a run cut short
# keeps what it finished. benchmarks/run_all.py --machine=gpu is the unhurried version.
#
#   bash benchmarks/gpu_session.sh prepare       # here, with network: wheels into .whl/
#   bash benchmarks/gpu_session.sh               # there: the run (DEADLINE seconds, default 560)
#   SCALE=smoke bash benchmarks/gpu_session.sh   # any machine: the same commands at toy sizes
#
# The order: a preflight (benchmarks/gpu_preflight.py: JAX and PyTorch on the GPU, else stop;
# the training stack on the packages there); (1) ResNet-18, batch 512, TF32: PGD and Madry-AT,
# ours against PyTorch eager and torch.compile; (2) ResNet-18 bf16 training steps: % of peak;
# (3, 4) slot refill, DeepFool and CW-L2 9x1000, on the standard and the adversarially trained
# MNIST CNN (each trained there first, on the embedded dataset); (5) the MNIST CNN and
# ResNet-20 with every PyTorch variant, if time is left.
#
# Packages: the GPU image has JAX, PyTorch, flax, optax, orbax and chex, not ml-collections,
# mlxtend or torchattacks: `prepare` downloads those (Python 3.12 wheels) into .whl/, and the
# library's pinned flax / optax / orbax-checkpoint / chex into .whl/pinned/, used only if the
# training stack fails on the image's own versions. The device call (timeout_s 600):
#   carry [".whl"], command: bash benchmarks/gpu_session.sh
# Results: $OUT when set (the device tool brings it back), else benchmarks/results/gpu_session/.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
  set -e
  download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$@"
  }
  download .whl ml-collections==1.1.0 mlxtend==0.25.0 torchattacks==3.5.1
  pins=$(grep -E '^(flax|optax|orbax-checkpoint|chex)==' requirements.txt)
  download .whl/pinned $pins
  ls -l .whl .whl/pinned
  exit 0
fi

OUT=${OUT:-benchmarks/results/gpu_session}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$SECONDS
DEADLINE=${DEADLINE:-560}  # seconds; SCALE=smoke multiplies it and each part's limit by 4
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/gpu_session_runs}

say() { echo "[$((SECONDS - START)) s] $*" | tee -a "$LOG"; }

# part NAME MAX_SECONDS MIN_SECONDS COMMAND...: runs COMMAND for at most MAX_SECONDS and what is
# left before the deadline; skipped when less than MIN_SECONDS is left.
part() {
  local name=$1 max=$(($2 * LIMIT_FACTOR)) min=$3; shift 3
  local left=$((DEADLINE - (SECONDS - START)))
  local limit=$((left < max ? left : max))
  if [ "$limit" -lt "$min" ]; then
    say "$name: skipped, $left s left"
    return 1
  fi
  say "$name: up to $limit s: $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status=${PIPESTATUS[0]}
  say "$name: exit $status$([ "$status" = 124 ] || [ "$status" = 137 ] && echo ' (time limit)')"
  return "$status"
}

if [ "${SCALE:-gpu}" = smoke ]; then
  # Toy sizes, to check the commands on any machine (2 CPU cores: about 20 minutes, most of it
  # compiling ResNet-18 in both frameworks).
  LIMIT_FACTOR=4
  PREFLIGHT_FLAGS=(--norequire_gpu)
  BATCH=4
  REPEATS=1
  SLOTS=(--batch_size=8 --num_images=16 --cw_num_images=16 --cw_binary_steps=2
         --cw_iterations=10 --project_to=100)
  AT_PGD_SLOTS=("${SLOTS[@]}")
else
  LIMIT_FACTOR=1
  PREFLIGHT_FLAGS=(--require_gpu)
  BATCH=512
  REPEATS=5
  # The embedded set's 969 correctly classified images, 512 slots, the reference CW-L2 budget.
  SLOTS=(--batch_size=512 --num_images=969 --cw_num_images=969 --cw_binary_steps=9
         --cw_iterations=1000)
  AT_PGD_SLOTS=(--batch_size=512 --num_images=1000 --cw_num_images=1000 --cw_binary_steps=9
                --cw_iterations=1000)
fi
DEADLINE=$((DEADLINE * LIMIT_FACTOR))

# Packages the image lacks; the pins go to a folder of their own, used only if they are needed.
if ls .whl/*.whl > /dev/null 2>&1; then
  timeout 120 $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/gpu_session_site .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH=/tmp/gpu_session_site${PYTHONPATH:+:$PYTHONPATH}
fi
{ timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv || true
  timeout 60 $PYTHON -c "import sys, jax, torch; print(sys.version); print('jax', \
jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/device.txt" | tee -a "$LOG"

# A GPU for both frameworks, and the training stack on the image's flax / optax / orbax / chex;
# if the stack fails there (not for time), on the library's pinned versions instead.
preflight() {
  part preflight 120 20 $PYTHON -m benchmarks.gpu_preflight "${PREFLIGHT_FLAGS[@]}"
}
preflight
status=$?
if [ "$status" = 2 ]; then
  say "no GPU for JAX or PyTorch: stopping before any benchmark"
  exit 1
fi
if [ "$status" != 0 ] && [ "$status" != 124 ] && ls .whl/pinned/*.whl > /dev/null 2>&1; then
  say "the training stack failed on the image's packages: trying the library's pins"
  timeout 120 $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/gpu_session_pinned .whl/pinned/*.whl 2>&1 | tee -a "$LOG"
  saved=$PYTHONPATH
  export PYTHONPATH=/tmp/gpu_session_pinned:$PYTHONPATH
  if preflight; then
    say "using the pinned flax / optax / orbax-checkpoint / chex"
  else
    say "the pins failed too: back to the image's packages (parts that train may fail)"
    export PYTHONPATH=$saved
  fi
fi

# (1) The speed targets: ResNet-18 at batch 512, TF32 (PyTorch's default for cuDNN
# convolutions): ours against PyTorch eager and torch.compile.
part resnet18_tf32 270 60 $PYTHON -m benchmarks.side_by_side --networks=resnet18 \
  --batch="$BATCH" --repeats="$REPEATS" --precision=tf32 --noflops --nochannels_last \
  --notorchattacks --output="$OUT/side_by_side_resnet18_tf32.json"

# (2) The bf16 target, % of peak on ResNet-18 training steps: ours with the compute_dtype switch
# (FLOPs from XLA's cost analysis), PyTorch eager under autocast beside it.
part resnet18_bf16 150 60 $PYTHON -m benchmarks.side_by_side --networks=resnet18 \
  --batch="$BATCH" --repeats="$REPEATS" --precision=bf16 --metrics=clean,madry \
  --notorch_compile --nochannels_last --notorchattacks \
  --output="$OUT/side_by_side_resnet18_bf16.json"

# (3, 4) Whole-test-set DeepFool and CW-L2 with and without slot refill (each model trained
# there first on the embedded dataset).
part slot_refill_standard 150 60 $PYTHON -m benchmarks.slot_refill --workdir="$RUNS" \
  --attacks=deepfool,cw_l2 "${SLOTS[@]}" --output="$OUT/slot_refill_standard.json"
part slot_refill_at_pgd 180 60 $PYTHON -m benchmarks.slot_refill --workdir="$RUNS" \
  --model=at_pgd --attacks=deepfool,cw_l2 "${AT_PGD_SLOTS[@]}" \
  --output="$OUT/slot_refill_at_pgd.json"

# (5) The smaller networks, every PyTorch variant, if time is left.
part small_networks_tf32 240 60 $PYTHON -m benchmarks.side_by_side \
  --networks=mnist_cnn,resnet20 --batch="$BATCH" --repeats="$REPEATS" --precision=tf32 \
  --output="$OUT/side_by_side_small_tf32.json"

say "done; results in $OUT"
exit 0
