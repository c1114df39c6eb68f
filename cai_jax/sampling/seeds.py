"""Seeds as pure functions of names: a rerun draws exactly what the first run drew."""
from __future__ import annotations

import hashlib
from typing import Any


def call_seed(*parts: Any) -> int:
  """A 31-bit seed as a pure function of ``parts`` (stable across runs and processes).

  Used for sampler calls, prompt orders and splits: ``call_seed(seed, "rollout", it)``.
  """
  key = "/".join(map(str, parts)).encode()
  return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF
