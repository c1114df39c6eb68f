"""Metric writers: JSONL (one object per line) and TensorBoard event files.

TensorBoard's format is written directly (TFRecord framing + the ``Event``
protobuf, hand-encoded), so no TensorFlow is needed. Only scalar summaries.
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Any, Mapping

import numpy as np


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord uses."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
  return _varint((num << 3) | wire) + payload


def _len_field(num: int, data: bytes) -> bytes:
  return _field(num, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """Encodes a ``tensorboard.Event`` message (wall_time=1, step=2, file_version=3, summary=5)."""
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    msg += _len_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _len_field(1, _len_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", val)))
        for tag, val in scalars.items())
    msg += _len_field(5, values)
  return msg


def frame_record(data: bytes) -> bytes:
  """TFRecord framing: length, masked crc of length, data, masked crc of data."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc(length)) + data
          + struct.pack("<I", _masked_crc(data)))


def read_records(path: str) -> list[bytes]:
  """Reads TFRecord payloads, checking both CRCs (for tests and tools)."""
  out = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (n,) = struct.unpack("<Q", header[:8])
      if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
        raise ValueError(f"{path}: corrupt record length")
      data = f.read(n)
      if struct.unpack("<I", f.read(4))[0] != _masked_crc(data):
        raise ValueError(f"{path}: corrupt record data")
      out.append(data)
  return out


def _to_float(v: Any) -> float | None:
  try:
    x = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return x


class MetricsWriter:
  """Appends metrics to ``{logdir}/metrics.jsonl`` and a TensorBoard event file.

  Non-numeric values are kept in the JSONL only. Writing is synchronous and small;
  call it at the log interval, not every step.

  A resumed run passes ``resume_step`` (the step its state was restored at; 0 for a
  fresh start): rows a killed attempt logged after that step are dropped, so no row is
  written twice.
  """

  def __init__(self, logdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    self.jsonl_path = os.path.join(logdir, "metrics.jsonl")
    self.rows: list[dict] = []
    if resume_step is not None and os.path.isfile(self.jsonl_path):
      self.rows = [r for r in _read_rows(self.jsonl_path) if r.get("step", 0) <= resume_step]
      tmp = self.jsonl_path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in self.rows)
      os.replace(tmp, self.jsonl_path)
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
      self.tb_path = os.path.join(logdir, name)
      self._tb = open(self.tb_path, "ab")
      self._tb.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
      self._tb.flush()

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    scalars = {}
    for k, v in metrics.items():
      x = _to_float(v)
      if x is None:
        row[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
      else:
        row[k] = x if math.isfinite(x) else str(x)
        scalars[k] = x
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self.rows.append(row)
    if self._tb is not None and scalars:
      self._tb.write(frame_record(encode_event(time.time(), int(step), scalars)))
      self._tb.flush()

  def logged(self, step: int, prefix: str) -> bool:
    """True if a row of ``step`` holds a metric whose name starts with ``prefix``."""
    return any(r.get("step") == step and any(k.startswith(prefix) for k in r)
               for r in self.rows)

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _read_rows(path: str) -> list[dict]:
  """The rows of a metrics file; a line cut by a kill (the last one) is dropped."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
