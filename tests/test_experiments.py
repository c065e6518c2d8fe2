"""Smoke tests of the experiments and their run system (tiny configs, seconds each)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from experiments import REGISTRY, _runs, load  # noqa: E402
from experiments.__main__ import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "environment.json", "timing.json"}


def _only_run_dir(root, name):
  dirs = sorted((Path(root) / name).iterdir())
  assert len(dirs) == 1, dirs
  return dirs[0]


class _Terminal(io.StringIO):
  """A stderr that says it is a terminal, as a person's is: progress bars show."""

  def isatty(self):
    return True


def _run(tmp_path, name, *args):
  """Runs ``name`` through the CLI (``args`` such as ``--smoke``) and checks the run directory."""
  err = _Terminal()
  with contextlib.redirect_stderr(err):
    assert main(["run", name, "--runs-dir", str(tmp_path), *args]) == 0
  # A progress bar on stderr, named for the experiment ("monte_carlo error:  40%|... 8/20 ...").
  assert re.search(rf"{name}[^\n\r]*\| *\d+/\d+ \[", err.getvalue()), err.getvalue()[-500:]
  run_dir = _only_run_dir(tmp_path, name)
  files = {p.name for p in run_dir.iterdir()}
  assert RUN_FILES <= files, files
  assert any(f.endswith(".png") for f in files), files
  assert "checkpoint.npz" not in files  # a finished run drops its checkpoint
  assert not [f for f in files if f.endswith(".tmp")]
  config = json.loads((run_dir / "config.json").read_text())
  assert config["experiment"] == name and "seed" in config["config"]
  env = json.loads((run_dir / "environment.json").read_text())
  assert {"python", "jax", "jaxlib", "optax", "devices", "platform"} <= set(env)
  # The code a run came from (None only outside a git checkout).
  head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
  if head.returncode == 0:
    assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)
  else:
    assert env["git"] is None
  # Files get the mode of a plain open(): readable by others unless the umask says otherwise.
  umask = os.umask(0)
  os.umask(umask)
  for f in run_dir.iterdir():
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    assert "step" in json.loads(line)
  return run_dir, json.loads((run_dir / "summary.json").read_text())


def _subprocess_env(xla_flags=""):
  """The test process's environment (its XLA flags included, so that a run in a
  subprocess compiles as the in-process runs it is compared with) plus ``xla_flags``."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
  return dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=flags)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
  """One smoke run of the classifier, shared by the tests that inspect or rerun it."""
  return _run(tmp_path_factory.mktemp("runs"), "classifier", "--smoke")


# -- experiments ------------------------------------------------------------------


def test_list_names_every_experiment(capsys):
  assert main(["list"]) == 0
  out = capsys.readouterr().out
  for name in REGISTRY:
    assert name in out


def test_lecture(tmp_path):
  _, s = _run(tmp_path, "lecture", "--smoke")
  assert s["cross_entropy"] == pytest.approx(0.6641, abs=5e-5)
  assert s["sum_exp"] == pytest.approx(6.4500, abs=1e-3)
  assert [round(s[f"exp.{i}"], 2) for i in range(3)] == [2.46, 3.32, 0.67]
  assert [round(s[f"softmax.{i}"], 2) for i in range(3)] == [0.38, 0.51, 0.10]
  assert s["rows_matching"] == s["rows_total"] > 0


@pytest.mark.slow
def test_classifier(classifier_run):
  _, s = classifier_run
  for m in ("mlp", "softmax_regression"):
    assert 0.5 < s[f"{m}.test_accuracy"] <= 1.0
    assert s[f"{m}.test_nll"] > 0
    # CE is the mean negative log-likelihood of the labels.
    assert s[f"{m}.test_log_likelihood"] == pytest.approx(-s["n_test"] * s[f"{m}.test_nll"], rel=1e-4)
    assert 0.0 <= s[f"{m}.test_ece"] <= 1.0
    assert f"{m}.train_nll" in s
  assert s["n_train"] + s["n_val"] + s["n_test"] == 1797
  assert "log-likelihood" in s["note"]


# The smoke runs below take 10 to 20 s of CPU each: they run with `pytest -m slow`
# (and in CI), as do the classifier's run and its rerun above; the quick default
# run keeps the lecture and every command-line check.
@pytest.mark.slow
@pytest.mark.xdist_group("test_attention_toy_dense_equals_chunked")
def test_attention_toy_dense_equals_chunked(tmp_path):
  _, s = _run(tmp_path, "attention_toy", "--smoke")
  assert 0.0 <= s["test_accuracy"] <= 1.0
  assert s["implementations_max_rel_diff"] < 1e-4


@pytest.mark.slow
@pytest.mark.xdist_group("test_monte_carlo")
def test_monte_carlo(tmp_path):
  _, s = _run(tmp_path, "monte_carlo", "--smoke")
  for m in ("mc", "antithetic", "sobol", "halton"):
    assert f"gaussian.{m}.slope" in s and 0.0 <= s[f"coverage.{m}"] <= 1.0
  assert -0.9 < s["gaussian.mc.slope"] < -0.2


@pytest.mark.slow
@pytest.mark.xdist_group("test_mle_heights")
def test_mle_heights(tmp_path):
  _, s = _run(tmp_path, "mle_heights", "--smoke")
  assert s["loc"] == pytest.approx(168.344, abs=1e-3)
  assert s["scale"] == pytest.approx(2.6207, abs=1e-3)
  assert 0.0 <= s["coverage.loc_wald"] <= 1.0


@pytest.mark.slow
@pytest.mark.xdist_group("test_vocab_softmax")
def test_vocab_softmax(tmp_path):
  _, s = _run(tmp_path, "vocab_softmax", "--smoke")
  assert s["corpus.vocab"] > 1000 and s["corpus.train_tokens"] > 100_000
  # Full and chunked linear cross-entropy train the same model to float32 rounding.
  assert s["full_vs_linear_relative_difference"] < 1e-5
  for m in ("full", "linear", "sampled", "adaptive"):
    assert 1.0 < s[f"{m}.val_perplexity"] < s["corpus.vocab"]


# -- rerun and resume -------------------------------------------------------------


@pytest.mark.slow
def test_rerun_is_identical_and_detects_a_difference(classifier_run, capsys, monkeypatch):
  run_dir, _ = classifier_run
  original = (run_dir / "summary.json").read_text()
  # The original showed its progress bar and the rerun shows none (stderr is no
  # terminal here): progress does not change the summary.
  assert main(["rerun", str(run_dir)]) == 0
  assert "summaries identical" in capsys.readouterr().out
  reruns = [d for d in run_dir.parent.iterdir() if d != run_dir]
  assert len(reruns) == 1
  assert (run_dir / "summary.json").read_text() == original  # never overwritten

  # A stored figure that the rerun does not reproduce is reported, with exit 1.
  # The rerun's computation was just shown to be exact, so it is replayed here
  # from the rerun directory instead of being computed a second time.
  rerun_summary = json.loads((reruns[0] / "summary.json").read_text())
  monkeypatch.setattr(_runs, "execute", lambda *a, **k: rerun_summary)
  s = json.loads(original)
  s["mlp.test_accuracy"] = 0.0
  _runs.write_json(run_dir / "summary.json", s)
  try:
    assert main(["rerun", str(run_dir)]) == 1
  finally:
    _runs.write_json(run_dir / "summary.json", json.loads(original))
  out = capsys.readouterr().out
  assert "DIFFERS" in out and "mlp.test_accuracy" in out


@pytest.mark.slow
@pytest.mark.xdist_group("test_resume_after_sigkill_matches_uninterrupted")
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
  # Long enough to be killed between checkpoints, short enough to rerun straight.
  args = ["--smoke", "--steps", "1000", "--log_every", "10", "--checkpoint_every", "50"]
  killed_root = tmp_path / "killed"
  proc = subprocess.Popen(
    [sys.executable, "-m", "experiments", "run", "classifier", "--runs-dir", str(killed_root), *args],
    cwd=ROOT,
    env=_subprocess_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  deadline = time.time() + 120
  ckpt = None
  while time.time() < deadline and proc.poll() is None:
    found = list(killed_root.glob("classifier/*/checkpoint.npz"))
    if found:
      ckpt = found[0]
      break
    time.sleep(0.02)
  assert ckpt is not None, proc.stderr.read().decode() if proc.poll() is not None else "timeout"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  run_dir = ckpt.parent
  if (run_dir / "summary.json").exists():
    pytest.skip("the run finished before it could be killed")

  assert main(["rerun", str(run_dir), "--resume"]) == 0
  resumed = json.loads((run_dir / "summary.json").read_text())
  timing = json.loads((run_dir / "timing.json").read_text())
  assert timing["resumed"] is True

  ref_dir, reference = _run(tmp_path / "straight", "classifier", *args)
  assert resumed == reference
  assert (run_dir / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("test_data_parallel_four_devices_matches_one")
def test_data_parallel_four_devices_matches_one(tmp_path):
  code = (
    "import dataclasses, json, sys, tempfile, pathlib, matplotlib; matplotlib.use('Agg')\n"
    "import jax; assert jax.device_count() == 4, jax.devices()\n"
    "from experiments import classifier, _runs\n"
    "out = {}\n"
    "for d in (1, 4):\n"
    "  cfg = dataclasses.replace(classifier.SMOKE, devices=d)\n"
    "  out[d] = _runs.execute(classifier, cfg, pathlib.Path(tempfile.mkdtemp()), quiet=True)\n"
    "print(json.dumps(out))\n"
  )
  r = subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=_subprocess_env("--xla_force_host_platform_device_count=4"),
    timeout=300,
  )
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  one, four = out["1"], out["4"]
  assert four["devices"] == 4 and one["devices"] == 1
  for k, v in one.items():
    if isinstance(v, float) and not k.endswith("accuracy"):
      assert four[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
  for m in ("mlp", "softmax_regression"):
    # One flipped prediction at most: rounding can move a borderline example.
    assert abs(four[f"{m}.test_accuracy"] - one[f"{m}.test_accuracy"]) <= 1 / one["n_test"] + 1e-12


# -- CLI and config errors --------------------------------------------------------


@pytest.mark.parametrize(
  "name, args, expected",
  [
    # Unknown options: one line, with the closest option by spelling or by initials.
    (
      "classifier",
      ["--hiden", "3"],
      "^error: classifier: unknown option '--hiden'; did you mean '--hidden'?",
    ),
    (
      "classifier",
      ["--lr", "0.1"],
      "^error: classifier: unknown option '--lr'; did you mean '--learning_rate'?",
    ),
    ("classifier", ["7"], "^error: classifier: unknown argument '7'"),
    # tyro's own errors (type, missing value, choices) name the option and the value.
    ("classifier", ["--steps", "ten"], "Error parsing --steps: .*'ten'"),
    ("classifier", ["--learning_rate"], "Missing value for argument '--learning_rate'"),
    ("attention_toy", ["--implementation", "foo"], "invalid choice 'foo' for argument '--implementation'"),
  ],
)
def test_bad_options_name_the_option(tmp_path, capsys, name, args, expected):
  assert main(["run", name, "--runs-dir", str(tmp_path), *args]) == 2
  err = capsys.readouterr().err
  assert re.search(expected, err, re.M), err
  if expected.startswith("^"):
    assert len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / name).exists()  # nothing is created for a bad config


@pytest.mark.parametrize(
  "name, args, expected",
  [
    ("classifier", ["--steps", "-5"], "classifier: --steps must be a positive integer, got -5"),
    ("classifier", ["--val_fraction", "1.5"], "--val_fraction must be in (0, 1), got 1.5"),
    ("classifier", ["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
    ("classifier", ["--devices", "64"], "--devices must be at most jax.device_count()"),
    ("attention_toy", ["--steps", "30"], "--steps must be a multiple of log_every (50), got 30"),
    ("attention_toy", ["--warmup_steps", "1000"], "--warmup_steps must be in [0, steps=1000), got 1000"),
    ("vocab_softmax", ["--val_fraction", "0"], "--val_fraction must be in (0, 1), got 0.0"),
    ("vocab_softmax", ["--cutoffs", "2048,512"], "--cutoffs must be comma-separated increasing positive"),
    ("vocab_softmax", ["--cutoffs", "a,b"], "--cutoffs must be comma-separated increasing positive"),
    (
      "vocab_softmax",
      ["--corpus_files", "-1"],
      "--corpus_files must be 0 (every file) or a positive integer",
    ),
    ("lecture", ["--mc_samples", "0"], "--mc_samples must be a positive integer, got 0"),
    ("monte_carlo", ["--methods", "mc,foo"], "--methods must be a comma-separated subset of mc,"),
    ("monte_carlo", ["--log2_n_max", "4"], "--log2_n_max must be >= log2_n_min (8), got 4"),
    ("mle_heights", ["--n_datasets", "0"], "--n_datasets must be a positive integer, got 0"),
  ],
)
def test_bad_values_are_rejected_before_any_work(tmp_path, capsys, name, args, expected):
  assert main(["run", name, "--runs-dir", str(tmp_path), *args]) == 2
  err = capsys.readouterr().err
  assert expected in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / name).exists()  # no run directory for a rejected config


@pytest.mark.parametrize(
  "content, expected",
  [
    ({"hiden": 3}, "unknown config field 'hiden'; did you mean 'hidden'"),
    ({"steps": "10"}, "field 'steps' must be int"),
    ({"steps": 1.5}, "field 'steps' must be int"),
    ({"devices": True}, "field 'devices' must be int"),
    ({"experiment": "lecture", "config": {}}, "config of experiment 'lecture'"),
    ({"steps": -5}, "classifier: --steps must be a positive integer, got -5"),
  ],
)
def test_bad_config_file_names_the_field(tmp_path, capsys, content, expected):
  path = tmp_path / "c.json"
  path.write_text(json.dumps(content))
  assert main(["run", "classifier", "--runs-dir", str(tmp_path), "--config", str(path)]) == 2
  err = capsys.readouterr().err
  assert expected in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "classifier").exists()


def test_config_file_choice_field_is_checked(tmp_path, capsys):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"implementation": "sparse"}))
  assert main(["run", "attention_toy", "--runs-dir", str(tmp_path), "--config", str(path)]) == 2
  assert "field 'implementation' must be one of 'dense', 'chunked', got 'sparse'" in capsys.readouterr().err


def test_config_file_then_command_line_override():
  module = load("classifier")
  import tempfile

  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"hidden": 7, "steps": 100, "learning_rate": 1}, f)
  config, options = _runs.parse_config(
    module, ["--config", f.name, "--steps", "200", "--runs-dir", "elsewhere"]
  )
  assert (config.hidden, config.steps, config.learning_rate) == (7, 200, 1.0)
  assert options.runs_dir == "elsewhere"
  # --smoke starts from SMOKE, the file overrides it, the command line overrides both.
  config, _ = _runs.parse_config(module, ["--steps", "100", "--smoke", "--config", f.name])
  os.unlink(f.name)
  assert (config.hidden, config.steps, config.batch_size) == (7, 100, module.SMOKE.batch_size)
  config, _ = _runs.parse_config(module, ["--batch-size", "32"])  # dashes work too
  assert config.batch_size == 32


@pytest.mark.parametrize("name", REGISTRY)
def test_help_describes_every_option_with_its_default(name, capsys, monkeypatch):
  import ast
  import dataclasses
  import inspect

  monkeypatch.setenv("COLUMNS", "200")  # descriptions unwrapped
  assert main(["run", name, "--help"]) == 0
  text = " ".join(re.sub("[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
  module = load(name)
  # The field docstrings, read from the source independently of tyro.
  body = ast.parse(inspect.getsource(module.Config)).body[0].body
  docs = {
    a.target.id: b.value.value
    for a, b in zip(body, body[1:])
    if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
  }
  for f in dataclasses.fields(module.Config):
    assert f.name in docs, f"{name}.Config.{f.name} has no docstring"
    # "--steps INT <docstring> (default: 2000)", "--causal, --no_causal <docstring> (default: True)"
    option = rf"--{f.name}(, --no_{f.name})?( [A-Z]+| {{[a-z,]+}})?"
    described = rf" {re.escape(docs[f.name])} \(default: {re.escape(str(f.default))}\)"
    assert re.search(option + described, text), (name, f.name)


def test_unknown_experiment_and_command(capsys):
  assert main(["run", "clasifier"]) == 2
  assert "did you mean 'classifier'" in capsys.readouterr().err
  assert main(["frobnicate"]) == 2
  assert main(["rerun", "/nonexistent/run"]) == 2
  assert "no config.json" in capsys.readouterr().err


def test_run_directories_are_never_reused(tmp_path):
  dirs = {_runs.new_run_dir(tmp_path, "x") for _ in range(3)}
  assert len(dirs) == 3
