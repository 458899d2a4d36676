"""Multi-host, simulated on one machine: 2 processes with 4 CPU devices each, joined by
jax.distributed (a coordinator on localhost, gloo CPU collectives), train with an interruption
and a resume through the checkpoint, then evaluate; the parameters and numbers must match one
process with 8 devices, and only process 0 may write logs and results."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir, out, process_id=0, num_processes=1, port=0):
  env = dict(os.environ)  # Its XLA_FLAGS (conftest.py's) carries no device count.
  # Its own process group, so that a hung collective can be killed with all its children.
  return subprocess.Popen(
      [sys.executable, WORKER, f"--process_id={process_id}", f"--num_processes={num_processes}",
       f"--port={port}", f"--workdir={workdir}", f"--out={out}"], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout=420):
  try:
    output, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, 9)
    output, _ = proc.communicate()
    raise AssertionError(f"worker timed out:\n{output[-4000:]}")
  assert proc.returncode == 0, output[-6000:]


def test_two_processes_of_four_devices_match_one_process_of_eight(tmp_path):
  port = free_port()
  workers = [launch(tmp_path / "multi", tmp_path / "out_multi", i, 2, port) for i in range(2)]
  for proc in workers:
    finish(proc)
  finish(launch(tmp_path / "single", tmp_path / "out_single"))

  single = json.loads((tmp_path / "out_single" / "result_0.json").read_text())
  multi = [json.loads((tmp_path / "out_multi" / f"result_{i}.json").read_text())
           for i in range(2)]
  assert single["process_count"] == 1 and multi[0]["process_count"] == 2
  for result in multi:  # Every process reports the same global numbers as the single process.
    assert result["interrupted"] == 6
    assert result["resumed_from_step"] == 4 and result["final_step"] == 12
    for key in ("test_accuracy", "clean_accuracy", "robust_accuracy"):
      assert result[key] == single[key], key
  reference = np.load(tmp_path / "out_single" / "params_0.npz")
  for i in range(2):
    params = np.load(tmp_path / "out_multi" / f"params_{i}.npz")
    assert set(params) == set(reference)
    for name in reference:  # The same sums, grouped differently over processes: rounding only.
      np.testing.assert_allclose(params[name], reference[name], rtol=1e-5, atol=1e-6,
                                 err_msg=f"process {i}: {name}")

  # One metrics log, each step once (not twice, as two writing processes would make it).
  exp = tmp_path / "multi" / "tiny"
  records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if "train_loss" in r]
  assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12]
  assert sorted(os.listdir(exp / "results")) == sorted(
      os.listdir(tmp_path / "single" / "tiny" / "results"))
