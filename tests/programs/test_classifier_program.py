"""``train_classifier`` on the tiny world: rude answers are "harmful" (label 1), polite ones
harmless. The classifier starts at 0.5 everywhere (zero head) and must learn the split."""
import json

import pytest

from cai_jax import workdir as workdir_lib
from cai_jax.models.store import SavedModel
from cai_jax.programs.classifiers.train import train_classifier
from cai_jax.train.metrics import read_jsonl


def _rows(path, words, good, bad, n, offset=0):
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      w, v = words[(i + offset) % 12], words[(3 * i + offset + 1) % 12]
      harmful = i % 2 == 1
      f.write(json.dumps({"prompt": f"{w}?", "response": f"{bad if harmful else good} {v}.",
                          "label": int(harmful)}) + "\n")
  return str(path)


@pytest.fixture
def data(tmp_path, words, good_bad):
  good, bad = good_bad
  return (_rows(tmp_path / "train.jsonl", words, good, bad, 48),
          _rows(tmp_path / "eval.jsonl", words, good, bad, 16, offset=5))


def test_an_exchange_classifier_learns_the_split(data, random_lm, tmp_path):
  from cai_jax.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  import functools  # pylint: disable=import-outside-toplevel
  train, evaluation = data
  out = train_classifier(
      str(tmp_path / "clf"), train_data=train, init_model=random_lm, kind="exchange",
      eval_data=evaluation, seq_len=32, batch_size=8, num_steps=30, eval_every=30,
      log_every=10, ckpt_every=30, mesh_shape=(2, 1, 1),
      optimizer=functools.partial(make_optimizer, learning_rate=3e-3, warmup_steps=2))
  saved = SavedModel.open(out)
  assert saved.kind == "scalar" and saved.info["classifier"] == "exchange"
  rows = read_jsonl(str(tmp_path / "clf" / "metrics.jsonl"))
  first, last = rows[0], [r for r in rows if "eval/accuracy" in r][-1]
  print({k: last[k] for k in last if k.startswith("eval/")})
  assert last["eval/accuracy"] >= 0.9 and last["eval/streaming_accuracy"] >= 0.9
  assert last["eval/loss"] < 0.5 * first["loss"]   # from log 2 = 0.69 at a zero head
  assert workdir_lib.is_done(str(tmp_path / "clf"))


def test_bad_rows_fail_before_work_with_file_and_line(data, random_lm, tmp_path):
  train, _ = data
  bad = tmp_path / "bad.jsonl"
  lines = open(train, encoding="utf-8").read().splitlines()
  lines[2] = json.dumps({"prompt": "x?", "response": "y.", "label": 2})
  bad.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:3: .*label"):
    train_classifier(str(tmp_path / "a"), train_data=str(bad), init_model=random_lm)
  no_response = tmp_path / "no_response.jsonl"
  no_response.write_text(json.dumps({"prompt": "x?", "label": 1}) + "\n")
  with pytest.raises(ValueError, match="needs a 'response'"):
    train_classifier(str(tmp_path / "b"), train_data=str(no_response), init_model=random_lm,
                     kind="output")
  with pytest.raises(ValueError, match="kind must be one of"):
    train_classifier(str(tmp_path / "c"), train_data=train, init_model=random_lm,
                     kind="both")
  assert not (tmp_path / "a" / "checkpoints").exists()


def test_what_each_kind_scores(words_tokenizer):
  from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn  # pylint: disable=import-outside-toplevel
  from cai_jax.programs.classifiers.train import encode  # pylint: disable=import-outside-toplevel
  tok, prompt = words_tokenizer, [Turn(HUMAN, "apple river?")]
  answer = "go away now stone."
  ids, mask = encode(tok, "input", prompt, None)
  assert mask == [0] * (len(ids) - 1) + [1]              # the request, at its last token
  out_ids, out_mask = encode(tok, "output", prompt, answer)
  ex_ids, ex_mask = encode(tok, "exchange", prompt, answer)
  scored = lambda i, m: [t for t, k in zip(i, m) if k]   # noqa: E731
  assert scored(ex_ids, ex_mask) == scored(out_ids, out_mask)   # the same response tokens
  first = ex_mask.index(1)
  request = tok.encode("apple river?")
  assert any(ex_ids[j:j + len(request)] == request for j in range(first))   # after it
  assert not any(out_ids[k:k + len(request)] == request for k in range(len(out_ids)))
  assert out_mask[-1] == ex_mask[-1] == 1 and len(scored(out_ids, out_mask)) >= len(
      tok.encode(answer))                                  # every response token scored
  full = tok.encode_dialogue([Turn(ASSISTANT, answer)]).ids   # header + response
  assert full[len(full) - len(out_ids):] == out_ids and all(out_mask)   # response only


def test_synthetic_data_from_a_constitution_trains_a_classifier(random_lm, tmp_path):
  """``classifier_data`` with the tiny random LM (its text is noise; the structure is what
  is checked): every principle x area x request x transform, two answers per harmful
  request and one per harmless one, held-out cells only in the eval files; the files load
  in ``train_classifier``."""
  from cai_jax.constitution import load_constitution  # pylint: disable=import-outside-toplevel
  from cai_jax.programs.classifiers.data import classifier_data  # pylint: disable=import-outside-toplevel
  const = load_constitution("constitutions/toy.json")
  n_p = len(const.critique_principles)
  wd = str(tmp_path / "data")
  classifier_data(wd, model=random_lm, constitution_path="constitutions/toy.json",
                  harm_areas=("locks", "poison"), requests_per_cell=1,
                  transforms=("none", "split_turns"), eval_fraction=0.25, max_new_tokens=4,
                  batch_size=32, mesh_shape=(2, 1, 1))
  summary = workdir_lib.read_json(f"{wd}/summary.json")
  rows = {f"{n}.{s}": [json.loads(x) for x in open(f"{wd}/{n}.{s}.jsonl")]
          for n in ("inputs", "exchanges") for s in ("train", "eval")}
  empty = summary["empty_requests"]
  assert len(rows["inputs.train"]) + len(rows["inputs.eval"]) == 2 * (n_p * 2 * 2 - empty)
  held = {tuple(c.split("/")) for c in summary["held_out_cells"]}
  assert len(held) == round(0.25 * n_p * 2)
  assert all((r["principle"], r["area"]) in held for r in rows["inputs.eval"])
  assert not any((r["principle"], r["area"]) in held for r in rows["inputs.train"])
  ex = rows["exchanges.train"] + rows["exchanges.eval"]
  # a harmful request gives a compliant answer (label 1) and a refusal (label 0)
  assert {r["label"] for r in ex} <= {0, 1} and all(r["response"] for r in ex)
  assert {r["transform"] for r in ex} == {"none", "split_turns"}
  assert summary["rows"]["exchanges.train"] == len(rows["exchanges.train"])
  out = train_classifier(str(tmp_path / "clf"), train_data=f"{wd}/exchanges.train.jsonl",
                         init_model=random_lm, kind="output", seq_len=32, batch_size=4,
                         num_steps=2, log_every=1, ckpt_every=2, mesh_shape=(2, 1, 1))
  assert SavedModel.open(out).info["classifier"] == "output"
