"""One process of the multi-host test (test_multihost.py): trains a tiny model with an
interruption and a resume through its checkpoint, evaluates it under PGD, and writes its final
parameters and numbers to --out. Run with --num_processes=2 it is one of two processes with 4 CPU
devices each, joined by jax.distributed through a coordinator on localhost; with 1, a single
process with all 8 devices (the reference)."""

import argparse
import json
import os
import sys

args = argparse.ArgumentParser()
args.add_argument("--process_id", type=int, default=0)
args.add_argument("--num_processes", type=int, default=1)
args.add_argument("--port", type=int, default=0)
args.add_argument("--workdir", required=True)
args.add_argument("--out", required=True)
args = args.parse_args()

# The device count is fixed when JAX starts: before anything imports it.
# Appended to the flags the test passes on (conftest.py's compile-time flag).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={8 // args.num_processes}")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if args.num_processes > 1:
  jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id,
                             initialization_timeout=120)
assert jax.device_count() == 8 and jax.local_device_count() == 8 // args.num_processes

import numpy as np  # noqa: E402

from conftest import blob_dataset, tiny_config  # noqa: E402
from defenses_jax import train as train_lib  # noqa: E402
from defenses_jax.config import attack  # noqa: E402
from defenses_jax.evaluation import evaluate  # noqa: E402

config = tiny_config(model="tt_mnist_cnn", epochs=2, checkpoint_every_steps=4)
config.eval.attacks.pgd = attack("pgd", "PGD (5 x 0.02, eps 0.1)", eps=0.1, step_size=0.02,
                                 steps=5)
config.eval.num_attack_examples = 32
config.eval.sanity.enabled = False
data = blob_dataset(96, seed=0), blob_dataset(40, seed=1)
interrupted = train_lib.train(config, args.workdir, datasets=data, interrupt_at_step=6)[1]
state, summary = train_lib.train(config, args.workdir, datasets=data)  # Resumes from step 4.
result = evaluate(config, args.workdir, datasets=data)
os.makedirs(args.out, exist_ok=True)
params = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
np.savez(os.path.join(args.out, f"params_{args.process_id}.npz"), **params)
with open(os.path.join(args.out, f"result_{args.process_id}.json"), "w") as f:
  json.dump({"interrupted": interrupted.interrupted_at_step, "resumed_from_step": summary.resumed_from_step,
             "test_accuracy": summary.test_accuracy, "final_step": summary.final_step,
             "clean_accuracy": result.clean_accuracy,
             "robust_accuracy": result.attacks["pgd"].robust_accuracy,
             "process_count": jax.process_count()}, f)
