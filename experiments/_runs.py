"""Run system: configs and their command line (tyro), run directories, metrics, checkpoints, reruns.

An experiment is a module with:

* ``NAME``: its name on the command line;
* ``Config``: a frozen dataclass whose fields (int, float, str, bool, or a
  ``Literal`` of choices) all have defaults and a one-line docstring (the
  command line's help text); every config has a ``seed``;
* ``run(config, ctx) -> dict``: trains or computes, logs through ``ctx`` and
  returns the summary (flat dotted keys or nested dicts of numbers/strings);
* ``SMOKE``: a tiny ``Config`` that runs the same code paths in seconds
  (``run NAME --smoke``, ``all --smoke`` and the smoke tests use it);
* optionally ``HEADLINE``: the summary keys that ``all`` shows in its table.

``summary.json`` holds only deterministic figures, so that ``rerun`` can
compare it exactly; wall-clock times go to ``timing.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import difflib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

DEFAULT_RUNS_ROOT = "runs"


class ConfigError(Exception):
  """A config file or command-line option that does not fit the config.

  Not a ValueError: tyro turns a ValueError raised while it builds a config into
  its own multi-line error box, and a rejected config is reported in one line.
  """


def require(experiment: str, ok: bool, option: str, expectation: str, got) -> None:
  """Raises ConfigError "<experiment>: --<option> must be <expectation>, got <got>"
  unless ``ok``. Configs call it from ``__post_init__``, so that a bad value is
  rejected when the config is built, before any data or run directory exists."""
  if not ok:
    raise ConfigError(f"{experiment}: --{option} must be {expectation}, got {got!r}")


def require_positive(experiment: str, config, *fields: str) -> None:
  """``require`` for integer fields that must be at least 1."""
  for f in fields:
    require(experiment, getattr(config, f) >= 1, f, "a positive integer", getattr(config, f))


def require_schedule(experiment: str, config) -> None:
  """A training loop's ``steps`` and ``checkpoint_every``: positive multiples of ``log_every``."""
  require_positive(experiment, config, "steps", "log_every", "checkpoint_every")
  for f in ("steps", "checkpoint_every"):
    v = getattr(config, f)
    require(experiment, v % config.log_every == 0, f, f"a multiple of log_every ({config.log_every})", v)


# ----------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
  """Writes ``path`` through a temporary file and a rename, with the mode a plain
  ``open`` would give (0666 less the umask; ``mkstemp`` alone makes it 0600)."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _to_jsonable(x):
  if isinstance(x, dict):
    return {str(k): _to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_jsonable(v) for v in x]
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x)
  if hasattr(x, "shape") and hasattr(x, "dtype"):  # jax / numpy arrays
    a = np.asarray(x)
    return _to_jsonable(a.item() if a.ndim == 0 else a.tolist())
  return x


def write_json(path, obj) -> None:
  """Writes ``obj`` as JSON through a temporary file and a rename."""
  text = json.dumps(_to_jsonable(obj), indent=2, sort_keys=False, allow_nan=True)
  _atomic_write_bytes(Path(path), (text + "\n").encode())


def read_json(path):
  with open(path) as f:
    return json.load(f)


def flatten(d, prefix=""):
  """Nested dicts -> one dict with dotted keys (already flat keys are kept)."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


# ----------------------------------------------------------------------------
# Configs and the command line of `run NAME`
# ----------------------------------------------------------------------------


def _field_types(cls):
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def suggest(name: str, choices) -> str:
  """The suffix "; did you mean X?" naming the choice closest to ``name`` (by
  spelling, or by initials: ``lr`` for ``learning_rate``), else ""."""
  choices = list(choices)
  bare = lambda c: c.lstrip("-").replace("-", "_")
  close = difflib.get_close_matches(name, choices, n=1)
  close = close or [c for c in choices if "".join(w[:1] for w in bare(c).split("_")) == bare(name)]
  return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(cls_name, field, typ, value):
  """Checks a JSON value against a field's type (int accepted for float)."""
  if typing.get_origin(typ) is typing.Literal:
    choices = typing.get_args(typ)
    if value not in choices:
      raise ConfigError(
        f"{cls_name}: field {field!r} must be one of {', '.join(map(repr, choices))}, got {value!r}"
      )
    return value
  if typ is bool:
    ok = isinstance(value, bool)
  elif typ is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif typ is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif typ is str:
    ok = isinstance(value, str)
  else:
    raise TypeError(f"{cls_name}: field {field!r} has unsupported type {typ!r}")
  if not ok:
    raise ConfigError(f"{cls_name}: field {field!r} must be {typ.__name__}, got {value!r}")
  return value


def config_from_dict(cls, values: dict, *, experiment: str | None = None, base=None):
  """Builds ``cls`` from a dict (over ``base``'s values when given), naming any
  unknown or mistyped field."""
  name = experiment or cls.__name__
  types = _field_types(cls)
  unknown = [k for k in values if k not in types]
  if unknown:
    k = unknown[0]
    raise ConfigError(f"{name}: unknown config field {k!r}{suggest(k, types)} (fields: {', '.join(types)})")
  kwargs = {k: _coerce(name, k, types[k], v) for k, v in values.items()}
  return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


def config_to_dict(config) -> dict:
  return dataclasses.asdict(config)


def load_config_file(path, *, experiment: str) -> dict:
  """Reads a config JSON: either flat fields or a run's ``config.json``."""
  try:
    data = read_json(path)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"--config: cannot read {path}: {e}") from None
  if not isinstance(data, dict):
    raise ConfigError(f"--config: {path} must hold a JSON object, got {type(data).__name__}")
  if "config" in data and "experiment" in data:
    if data["experiment"] != experiment:
      raise ConfigError(
        f"--config: {path} is a config of experiment {data['experiment']!r}, not {experiment!r}"
      )
    data = data["config"]
  return data


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """Where the run goes and which config it starts from."""

  runs_dir: str = DEFAULT_RUNS_ROOT
  """root of the run directories"""
  smoke: bool = False
  """start from the experiment's tiny SMOKE config instead of the defaults"""
  config: Annotated[str | None, tyro.conf.arg(metavar="FILE.json")] = None
  """a JSON file of config fields, or a run's config.json (command-line options override it)"""


def tyro_cli(cls, argv, **kwargs):
  """``tyro.cli`` as every command of the experiments calls it: returns
  ``(parsed, unknown arguments)``."""
  # use_underscores: the options are spelled as the fields (--learning_rate);
  # tyro accepts dashes too (--learning-rate).
  return tyro.cli(cls, args=argv, use_underscores=True, return_unknown_args=True, **kwargs)


def parse_config(module, argv):
  """Parses ``argv`` into (config, RunOptions) with tyro; a bad option or value
  raises ConfigError with a one-line message, tyro's own errors (a value of the
  wrong type, a choice that does not exist) exit with status 2 (SystemExit).

  Precedence: command-line options, then ``--config FILE.json``, then the
  ``SMOKE`` config with ``--smoke``, then the dataclass defaults. ``--help``
  prints every option with its description and default (SystemExit(0)).
  """
  # First the run options alone (the rest is left for the second pass), since
  # --smoke and --config set the defaults that the config fields start from.
  try:
    pre, _ = tyro_cli(RunOptions, argv, add_help=False, console_outputs=False)
  except SystemExit:  # a malformed run option: the full parse below reports it
    pre = RunOptions()
  base = module.SMOKE if pre.smoke else module.Config()
  if pre.config:
    base = config_from_dict(
      module.Config, load_config_file(pre.config, experiment=module.NAME), experiment=module.NAME, base=base
    )
  # One parser for both: the experiment's fields (help from their docstrings)
  # in a group named for it, beside the run options.
  cls = dataclasses.make_dataclass(
    "Run",
    [
      ("run", tyro.conf.OmitArgPrefixes[RunOptions], dataclasses.field(default=pre)),
      (module.NAME, tyro.conf.OmitArgPrefixes[module.Config], dataclasses.field(default=base)),
    ],
    frozen=True,
  )
  doc = (module.__doc__ or "").strip()
  parsed, unknown = tyro_cli(cls, argv, prog=f"python -m experiments run {module.NAME}", description=doc)
  if unknown:
    opt = next((a for a in unknown if a.startswith("-")), unknown[0])
    names = [f"--{f.name}" for f in (*dataclasses.fields(module.Config), *dataclasses.fields(RunOptions))]
    what = "option" if opt.startswith("-") else "argument"
    raise ConfigError(
      f"{module.NAME}: unknown {what} {opt!r}{suggest(opt.split('=')[0], names) if what == 'option' else ''} "
      f"(see `python -m experiments run {module.NAME} --help`)"
    )
  return getattr(parsed, module.NAME), parsed.run


# ----------------------------------------------------------------------------
# Environment, run directories
# ----------------------------------------------------------------------------


def environment() -> dict:
  import jax
  import jaxlib

  env = {
    "python": sys.version.split()[0],
    "platform": platform.platform(),
    "machine": platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "git": _git_state(),
  }
  for mod in ("optax", "numpy", "jaxsoft"):
    try:
      env[mod] = importlib.import_module(mod).__version__
    except Exception:  # noqa: BLE001 - a missing package is recorded, not fatal
      env[mod] = None
  return env


def _git_state() -> dict | None:
  """The commit of the checkout the experiments run from and whether it has
  uncommitted changes; None outside a git checkout or without git."""
  root = Path(__file__).resolve().parents[1]

  def git(*args):
    return subprocess.run(
      ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()

  try:
    return {
      "commit": git("rev-parse", "HEAD"),
      "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }
  except (OSError, subprocess.SubprocessError):
    return None


def new_run_dir(root, experiment: str) -> Path:
  """Creates a fresh ``root/<experiment>/<run-id>``; never reuses one."""
  base = Path(root) / experiment
  base.mkdir(parents=True, exist_ok=True)
  stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
  for i in range(1000):
    run_id = stamp if i == 0 else f"{stamp}-{i}"
    path = base / run_id
    try:
      path.mkdir()  # atomic: fails if it exists, so two runs never share a directory
      return path
    except FileExistsError:
      continue
  raise RuntimeError(f"cannot create a new run directory under {base}")


# ----------------------------------------------------------------------------
# Run context handed to experiments
# ----------------------------------------------------------------------------


class RunContext:
  """What an experiment's ``run`` writes through: metrics, plots, checkpoints."""

  def __init__(self, run_dir: Path, *, resume: bool = False, quiet: bool | None = None):
    self.run_dir = Path(run_dir)
    self.resume = resume
    self.quiet = (not sys.stderr.isatty()) if quiet is None else quiet
    # A resumed run starts with no metrics: load_checkpoint brings back those
    # logged up to the checkpoint, and an experiment without checkpoints redoes all.
    self._metrics: list[dict] = []

  # -- metrics -----------------------------------------------------------------
  def log(self, step: int, **metrics) -> None:
    """Records one line of ``metrics.jsonl`` (flushed at checkpoints and at the end)."""
    self._metrics.append(_to_jsonable({"step": int(step), **metrics}))

  def flush_metrics(self) -> None:
    lines = "".join(json.dumps(m) + "\n" for m in self._metrics)
    _atomic_write_bytes(self.run_dir / "metrics.jsonl", lines.encode())

  @property
  def metrics(self) -> list[dict]:
    return list(self._metrics)

  # -- progress ----------------------------------------------------------------
  def progress(self, iterable=None, *, total=None, desc=None, initial=0):
    """A tqdm bar that stays silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
      iterable, total=total, desc=desc, initial=initial, disable=self.quiet, leave=False, dynamic_ncols=True
    )

  # -- plots -------------------------------------------------------------------
  def save_figure(self, fig, name: str) -> Path:
    """Saves a matplotlib figure as ``name.png`` atomically and closes it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = self.run_dir / f"{name}.png"
    _atomic_write_bytes(path, buf.getvalue())
    return path

  # -- checkpoints -------------------------------------------------------------
  @property
  def checkpoint_path(self) -> Path:
    return self.run_dir / "checkpoint.npz"

  def save_checkpoint(self, step: int, state) -> None:
    """Saves a pytree of arrays (params, optimizer state, ...) with its step.

    ``.npz`` without pickling: loading never executes code. The metrics logged
    so far are flushed first, so a resumed run keeps exactly the lines up to
    the checkpoint's step.
    """
    import io

    import jax

    self.flush_metrics()
    leaves, _ = jax.tree.flatten_with_path(state)
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, (_, leaf) in enumerate(leaves)}
    arrays["__step__"] = np.asarray(step, dtype=np.int64)
    arrays["__paths__"] = np.asarray([jax.tree_util.keystr(p) for p, _ in leaves])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write_bytes(self.checkpoint_path, buf.getvalue())

  def load_checkpoint(self, template):
    """Returns ``(step, state)`` from the checkpoint, or ``(0, template)`` if none.

    Only when resuming; ``template`` gives the tree structure and dtypes. The
    metrics logged after the checkpoint's step are dropped so the resumed run
    writes them again.
    """
    import jax

    if not (self.resume and self.checkpoint_path.exists()):
      return 0, template
    with np.load(self.checkpoint_path, allow_pickle=False) as z:
      step = int(z["__step__"])
      paths = [str(p) for p in z["__paths__"]]
      leaves, treedef = jax.tree.flatten_with_path(template)
      want = [jax.tree_util.keystr(p) for p, _ in leaves]
      if paths != want:
        raise ValueError(
          f"checkpoint {self.checkpoint_path} does not match the model: "
          f"saved leaves {paths[:4]}..., expected {want[:4]}..."
        )
      new = []
      for i, (_, leaf) in enumerate(leaves):
        a = z[f"leaf_{i:05d}"]
        if a.shape != np.shape(leaf):
          raise ValueError(f"checkpoint leaf {want[i]} has shape {a.shape}, expected {np.shape(leaf)}")
        new.append(jax.numpy.asarray(a, dtype=getattr(leaf, "dtype", a.dtype)))
    mpath = self.run_dir / "metrics.jsonl"
    if mpath.exists():
      with open(mpath) as f:
        logged = [json.loads(line) for line in f if line.strip()]
      self._metrics = [m for m in logged if m.get("step", 0) <= step]
    return step, jax.tree.unflatten(treedef, new)


def log_scale(ax, axis: str = "y", base: int = 10) -> None:
  """A log axis whose ticks read as plain numbers (3, 0.3, 1e-03), or as powers
  of 2 for ``base=2``: matplotlib's default labels a range inside one decade
  "3.1x10^0" on every minor tick."""
  import matplotlib.ticker as ticker

  getattr(ax, f"set_{axis}scale")("log", base=base)
  scale = getattr(ax, f"{axis}axis")
  if base == 2:
    scale.set_major_formatter(ticker.LogFormatterMathtext(base=2))
    scale.set_minor_formatter(ticker.NullFormatter())
  else:
    scale.set_major_formatter(ticker.LogFormatter(base=base))
    scale.set_minor_formatter(ticker.LogFormatter(base=base, minor_thresholds=(1, 0.4)))


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------


def execute(module, config, run_dir: Path, *, resume: bool = False, quiet=None) -> dict:
  """Runs ``module.run(config)`` in ``run_dir`` and writes every file."""
  run_dir = Path(run_dir)
  if not resume:
    write_json(run_dir / "config.json", {"experiment": module.NAME, "config": config_to_dict(config)})
    write_json(run_dir / "environment.json", environment())
  ctx = RunContext(run_dir, resume=resume, quiet=quiet)
  t0 = time.perf_counter()
  try:
    summary = module.run(config, ctx)
  except ConfigError:
    # A value that only the data can reject (a cutoff past the vocabulary):
    # the run never started, so it leaves no directory behind.
    if not resume:
      shutil.rmtree(run_dir, ignore_errors=True)
      with contextlib.suppress(OSError):  # the experiment's folder, when this was its only run
        run_dir.parent.rmdir()
    raise
  seconds = time.perf_counter() - t0
  ctx.flush_metrics()
  summary = _to_jsonable(summary)
  write_json(run_dir / "summary.json", summary)
  timing = {
    "wall_seconds": seconds,
    "resumed": resume,
    "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
  }
  tpath = run_dir / "timing.json"
  if resume and tpath.exists():
    timing["earlier"] = read_json(tpath)
  write_json(tpath, timing)
  # The checkpoint only serves an interrupted run; a finished one drops it.
  if ctx.checkpoint_path.exists():
    ctx.checkpoint_path.unlink()
  return summary


def load_run(run_dir):
  """(experiment name, config dict) of a saved run."""
  path = Path(run_dir) / "config.json"
  if not path.exists():
    raise ConfigError(f"rerun: {run_dir} has no config.json (not a run directory)")
  data = read_json(path)
  return data["experiment"], data["config"]


def _same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return (
    type(a) is type(b)
    and a == b
    or (
      isinstance(a, (int, float))
      and isinstance(b, (int, float))
      and not isinstance(a, bool)
      and not isinstance(b, bool)
      and a == b
    )
  )


def compare_summaries(old: dict, new: dict) -> tuple[bool, str]:
  """Side-by-side table of two summaries; True when every figure is identical."""
  a, b = flatten(old), flatten(new)
  keys = list(a) + [k for k in b if k not in a]
  rows = []
  ok = True
  for k in keys:
    va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
    same = k in a and k in b and _same(va, vb)
    ok &= same
    rows.append((k, _fmt(va), _fmt(vb), "ok" if same else "DIFFERS"))
  return ok, format_table(("figure", "original", "rerun", ""), rows)


def _fmt(v) -> str:
  if isinstance(v, float):
    return repr(v)
  s = str(v)
  return s if len(s) <= 60 else s[:57] + "..."


def format_table(header, rows) -> str:
  rows = [tuple(str(c) for c in r) for r in rows]
  widths = [
    max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)
  ]
  line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
  out = [line(header), line(["-" * w for w in widths])]
  out += [line(r) for r in rows]
  return "\n".join(out)
