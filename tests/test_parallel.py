"""Data-parallel tests need 8 devices, and JAX fixes its device count when it starts, so they run
in a fresh pytest process with 8 fake CPU devices; its outcome is this test's outcome."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_data_parallel_suite_on_eight_fake_devices():
  env = dict(os.environ, DEFENSES_JAX_MULTIDEVICE="1",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip())
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         os.path.join(HERE, "multidevice")], cwd=os.path.dirname(HERE), env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "failed" not in proc.stdout
