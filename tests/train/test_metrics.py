"""JSONL + TensorBoard writer: records parse back, CRCs are right, values round-trip."""
import struct

import numpy as np

from cai_jax.train import metrics


def test_crc32c_known_vectors():
  # RFC 3720 test vectors for CRC-32C.
  assert metrics.crc32c(b"") == 0
  assert metrics.crc32c(b"123456789") == 0xE3069283
  assert metrics.crc32c(bytes(32)) == 0x8A9136AA


def _decode_varint(buf, i):
  shift = n = 0
  while True:
    b = buf[i]
    n |= (b & 0x7F) << shift
    i += 1
    if not b & 0x80:
      return n, i
    shift += 7


def _parse(buf):
  """Minimal protobuf parser: {field: [values]} (bytes for length-delimited)."""
  out, i = {}, 0
  while i < len(buf):
    key, i = _decode_varint(buf, i)
    num, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _decode_varint(buf, i)
    elif wire == 1:
      v, i = struct.unpack("<d", buf[i:i + 8])[0], i + 8
    elif wire == 5:
      v, i = struct.unpack("<f", buf[i:i + 4])[0], i + 4
    else:
      n, i = _decode_varint(buf, i)
      v, i = buf[i:i + n], i + n
    out.setdefault(num, []).append(v)
  return out


def test_writer_round_trip(tmp_path):
  with metrics.MetricsWriter(str(tmp_path)) as w:
    w.write(10, {"loss": np.float32(2.5), "lr": 1e-3, "note": "x"})
    w.write(20, {"loss": 1.25, "bad": float("nan")})
  rows = metrics.read_jsonl(w.jsonl_path)
  assert rows[0] == {"step": 10, "loss": 2.5, "lr": 1e-3, "note": "x"}
  assert rows[1]["bad"] == "nan"
  records = metrics.read_records(w.tb_path)
  assert len(records) == 3
  first = _parse(records[0])
  assert first[3] == [b"brain.Event:2"]
  ev = _parse(records[1])
  assert ev[2] == [10]
  values = [_parse(v) for v in _parse(ev[5][0])[1]]
  got = {v[1][0].decode(): v[2][0] for v in values}
  assert got == {"loss": 2.5, "lr": np.float32(1e-3)}


def test_corrupt_record_detected(tmp_path):
  path = tmp_path / "events"
  data = bytearray(metrics.frame_record(metrics.encode_event(1.0, 1, {"a": 1.0})))
  data[15] ^= 0xFF
  path.write_bytes(bytes(data))
  try:
    metrics.read_records(str(path))
  except ValueError as e:
    assert "corrupt" in str(e)
  else:
    raise AssertionError("corruption not detected")
