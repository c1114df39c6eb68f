"""benchmarks/bench_sampler_gpu.py's code paths on CPU (its ``--smoke`` mode, with a
one-layer model to keep the suite fast): our decode sweep, the transformers peer on the
same weights, the PPO iteration split through the real learner, the JSON and the table."""
import dataclasses
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  spec = importlib.util.spec_from_file_location(
      "bench_sampler_gpu", os.path.join(ROOT, "benchmarks", "bench_sampler_gpu.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules.setdefault(spec.name, mod)   # dataclasses look their module up there
  spec.loader.exec_module(sys.modules[spec.name])
  return sys.modules[spec.name]


def test_smoke_runs_every_section_and_writes_the_json(tmp_path, capsys):
  b = _bench()
  # one layer and float32 (XLA:CPU compiles the PPO learner's bf16 programs ~2x slower);
  # `python benchmarks/bench_sampler_gpu.py --smoke` runs the bf16 two-layer shapes
  tiny = dataclasses.replace(b.TINY, n_layers=1, param_dtype="float32", dtype="float32")
  shapes = dataclasses.replace(b.SMOKE, model=tiny,
                               batches=(2,), prompt=8, new=8, ppo_rollout=4,
                               ppo_minibatch=2, ppo_new=4, ppo_prompt=24)
  out = tmp_path / "gpu.json"
  data = b.run(smoke=True, out=str(out), shapes=shapes)
  assert data["errors"] == {}
  assert json.loads(out.read_text())["goals"] == json.loads(json.dumps(data["goals"]))
  assert data["meta"]["peaks"]["placeholder"]
  for batch in ("2",):
    row = data["decode"][batch]
    assert row["decode_tok_s"] > 0 and row["mbu"] > 0 and row["roofline_ratio"] > 0
    assert row["compile_events_s"] > 0
    peer = data["peer"]["batches"][batch]
    assert peer["hf_generate_tok_s"] > 0 and peer["ours_over_hf"] > 0
    assert peer["first_token_agreement"] >= 0.5   # same weights (to_hf), greedy
  ppo = data["ppo"]
  assert ppo["rollout_batch"] == 4 and ppo["optimizer_steps"] == 4
  shares = [ppo[k + "_share"] for k in ("generation", "score", "learn", "other")]
  assert abs(sum(shares) - 1) < 1e-6 and min(shares[:3]) > 0
  assert set(data["goals"]) == {"mbu_at_batch_2", "roofline_ratio_at_batch_2",
                                "ppo_generation_share"}
  text = capsys.readouterr().out
  assert "PLACEHOLDER" in text and "| generation |" in text and "### Goals" in text
