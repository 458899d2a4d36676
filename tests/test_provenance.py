"""suites/provenance.py: a run stopped mid-stage keeps that stage's time, marked interrupted,
and the published header says so."""

import json
import os

import pytest

from defenses_jax.suites import provenance, publish


def test_an_interrupted_stage_is_recorded_with_its_time(tmp_path):
  out_dir = str(tmp_path / "suite")
  with provenance.recording(out_dir, "train", "python launch.py ...") as run:
    with run.stage("train a"):
      pass
  with pytest.raises(KeyboardInterrupt):
    with provenance.recording(out_dir, "train", "python launch.py ...") as run:
      with run.stage("train b"):
        raise KeyboardInterrupt  # What a SIGTERM'd training raises through.
  with open(os.path.join(out_dir, provenance.FILENAME)) as f:
    first, second = json.load(f)["runs"]
  assert first["finished"] and first["stages"] == [{"stage": "train a",
                                                     "seconds": first["stages"][0]["seconds"]}]
  assert second["finished"] is None
  (stage,) = second["stages"]
  assert stage["stage"] == "train b" and stage["interrupted"] is True
  assert stage["seconds"] >= 0
  header = publish.provenance_header("suite", [first, second])
  assert "train b 0 s (interrupted)" in header and "train a 0 s;" not in header
  assert "train a 0 s (interrupted)" not in header
