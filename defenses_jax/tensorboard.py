"""Scalars as TensorBoard event files, without importing TensorFlow into the training process.

An event file is a TFRecord stream of `Event` protocol buffers: a version record, then one event
per (step, scalars) with `Summary.Value(tag, simple_value)`. Both formats are small and stable,
so they are encoded here directly (TensorFlow's import costs seconds and, on a GPU machine, would
compete with JAX for the device).

    tensorboard --logdir <workdir>    # every experiment's <workdir>/<name>/tensorboard/
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected.
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  key = _varint((number << 3) | wire_type)
  if wire_type == 2:  # Length-delimited.
    return key + _varint(len(payload)) + payload
  return key + payload


def _event(wall_time: float, step: int = 0, *, file_version: str = "",
           scalars: dict | None = None) -> bytes:
  event = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version:
    event += _field(3, 2, file_version.encode())
  if scalars:
    values = b"".join(
        _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
        for tag, value in scalars.items())
    event += _field(5, 2, values)
  return event


def _record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data
          + struct.pack("<I", _masked_crc(data)))


class ScalarWriter:
  """Appends scalar events to a new event file in `logdir`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    with open(self.path, "ab") as f:
      f.write(_record(_event(time.time(), file_version="brain.Event:2")))

  def scalars(self, step: int, values: dict) -> None:
    values = {tag: float(v) for tag, v in values.items()}
    if values:
      with open(self.path, "ab") as f:
        f.write(_record(_event(time.time(), int(step), scalars=values)))
