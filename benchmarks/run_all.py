"""One command per machine: the side-by-side benchmark (JAX against PyTorch and torchattacks on
the MNIST CNN, ResNet-20 and ResNet-18; benchmarks/side_by_side.py) at sizes suited to the
machine, its results written to benchmarks/results/side_by_side_<machine>.json and one markdown
table per network printed; then the other benchmark scripts' commands for that machine, which
need a trained model (benchmarks/standard_model.py trains one first) or take long, listed or,
with --others=run, run one after the other.

  python -m benchmarks.run_all --machine=cpu    # 2 CPU cores: an estimated half hour or more
                                                # on an idle machine (ResNet-18, batch 32, most)
  python -m benchmarks.run_all --machine=gpu    # one H100 / H200: batch 512, TF32
  python -m benchmarks.run_all --machine=cpu --batch=4 --batch_for= --repeats=1 \\
      --output=/tmp/side_by_side_smoke.json     # smoke run, every row at batch 4: 20 min on
                                                # 2 busy cores, nearly all of it compilation

Every flag of side_by_side.py is a flag here too; the machine's settings below fill in those
not given on the command line.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags

from benchmarks import side_by_side

_MACHINE = flags.DEFINE_enum("machine", "cpu", ["cpu", "gpu"], "Which machine's sizes to use.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands only.")
_OTHERS = flags.DEFINE_enum("others", "list", ["list", "run", "none"],
                            "The other benchmark scripts: print their commands, or run them.")

# side_by_side flags per machine; a flag given on the command line wins.
MACHINES = {
    "cpu": {"networks": ["mnist_cnn", "resnet20", "resnet18"], "batch": 128,
            "batch_for": ["resnet18=32"], "repeats": 3, "precision": "float32",
            "torch_device": "cpu"},
    # The issue's target: ResNet-18 at batch 512. TF32 is both frameworks' fast float32 path on
    # Hopper (PyTorch's default for cuDNN convolutions); --precision=float32 for full float32.
    "gpu": {"networks": ["mnist_cnn", "resnet20", "resnet18"], "batch": 512, "batch_for": [],
            "repeats": 10, "precision": "tf32", "torch_device": ""},
}

OTHER_COMMANDS = {
    "cpu": [
        "python -m benchmarks.conv_in_loops --output=benchmarks/results/conv_in_loops_cpu.json",
        "python -m benchmarks.attacks --workdir=runs "
        "--output=benchmarks/results/attacks_cpu.json",
        "python -m benchmarks.slot_refill --workdir=runs "
        "--output=benchmarks/results/slot_refill_cpu.json",
        # On an adversarially trained CNN, where the images' costs differ (trains it first).
        "python -m benchmarks.slot_refill --workdir=runs --model=at_pgd "
        "--attacks=deepfool,cw_l2,cw_linf --cw_num_images=256 "
        "--output=benchmarks/results/slot_refill_at_pgd_cpu.json",
    ],
    # conv_in_loops is about XLA CPU's convolution layouts: not a GPU benchmark.
    "gpu": [
        # The bf16 targets (% of peak on ResNet-18 training steps): the library's compute_dtype
        # switch against PyTorch's autocast.
        "python -m benchmarks.side_by_side --precision=bf16 --batch=512 --repeats=10 "
        "--output=benchmarks/results/side_by_side_gpu_bf16.json",
        "python -m benchmarks.attacks --workdir=runs --num_images=512 "
        "--output=benchmarks/results/attacks_gpu.json",
        "python -m benchmarks.slot_refill --workdir=runs --batch_size=512 --cw_num_images=969 "
        "--apgd_num_images=969 --hsj_num_images=969 --cw_binary_steps=9 --cw_iterations=1000 "
        "--output=benchmarks/results/slot_refill_gpu.json",
        "python -m benchmarks.slot_refill --workdir=runs --model=at_pgd --batch_size=512 "
        "--attacks=deepfool,cw_l2 --cw_num_images=1000 --cw_binary_steps=9 --cw_iterations=1000 "
        "--output=benchmarks/results/slot_refill_at_pgd_gpu.json",
    ],
}


def apply_machine_settings(machine: str) -> list[str]:
  """Sets side_by_side's flags not given on the command line to the machine's values; returns
  the equivalent command line."""
  settings = dict(MACHINES[machine])
  settings["output"] = f"benchmarks/results/side_by_side_{machine}.json"
  for name, value in settings.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value
  args = []
  for n in ("networks", "batch", "batch_for", "repeats", "precision", "metrics", "torch_compile",
            "torchattacks", "channels_last", "flops", "cpu_peak_gflops", "torch_threads",
            "torch_device", "output"):
    value = flags.FLAGS[n].value
    value = ",".join(value) if isinstance(value, list) else value
    args.append(f"--{n}={value}" if not isinstance(value, bool) else
                f"--{'' if value else 'no'}{n}")
  return ["python", "-m", "benchmarks.side_by_side", *args]


def main(argv):
  machine = _MACHINE.value
  if machine == "cpu":
    import jax
    jax.config.update("jax_platforms", "cpu")  # before JAX starts a backend
  command = apply_machine_settings(machine)
  print(("" if _DRY_RUN.value else "running: ") + shlex.join(command), flush=True)
  if not _DRY_RUN.value:
    side_by_side.main(argv)
  if _OTHERS.value == "none":
    return
  print(f"\nthe other benchmarks on this machine ({machine}):")
  for other in OTHER_COMMANDS[machine]:
    print("  " + other)
  if _OTHERS.value == "run" and not _DRY_RUN.value:
    for other in OTHER_COMMANDS[machine]:
      print(f"\nrunning: {other}", flush=True)
      subprocess.run([sys.executable, *shlex.split(other)[1:]], check=True)


if __name__ == "__main__":
  app.run(main)
