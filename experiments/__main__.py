"""python -m experiments list | run NAME [--field value ...] | all | rerun RUN_DIR [--resume]"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

# Matplotlib must never try to open a window: plots are files.
import matplotlib
import tyro

matplotlib.use("Agg")

from experiments import REGISTRY, _runs, load  # noqa: E402

USAGE = """usage: python -m experiments COMMAND ...

commands:
  list                          the experiments, one line each
  run NAME [--field value ...]  one run with its config (see run NAME --help;
                                --smoke starts from a tiny config)
  all [--runs-dir DIR] [--smoke]  every experiment on its defaults (or tiny
                                configs), then one table
  rerun RUN_DIR [--resume]      rerun a saved config and compare summaries
                                (--resume: finish an interrupted run in place)
"""


def _err(msg: str, code: int = 2) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return code


def cmd_list(argv) -> int:
  if argv:
    return _err(f"list takes no arguments, got {' '.join(argv)}")
  for name in REGISTRY:
    doc = (load(name).__doc__ or "").strip().splitlines()
    print(f"{name:15s} {doc[0] if doc else ''}")
  return 0


def _print_summary(summary):
  flat = _runs.flatten(summary)
  print(_runs.format_table(("figure", "value"), [(k, _runs._fmt(v)) for k, v in flat.items()]))


def _parse(parse, *args):
  """``parse(*args)``, or the exit status of a bad command line: 2 with one line
  for a ConfigError, tyro's own status (2, after its message; 0 after --help)."""
  try:
    return parse(*args), None
  except _runs.ConfigError as e:
    return None, _err(str(e))
  except KeyError as e:
    return None, _err(e.args[0])
  except SystemExit as e:
    return None, e.code


def cmd_run(argv) -> int:
  if not argv or argv[0].startswith("-"):
    return _err(f"run needs an experiment name: one of {', '.join(REGISTRY)}")
  name, rest = argv[0], argv[1:]
  module, code = _parse(load, name)
  if module is None:
    return code
  parsed, code = _parse(_runs.parse_config, module, rest)
  if parsed is None:
    return code
  config, options = parsed
  run_dir = _runs.new_run_dir(options.runs_dir, module.NAME)
  print(f"{module.NAME}: run directory {run_dir}", flush=True)
  try:
    summary = _runs.execute(module, config, run_dir)
  except _runs.ConfigError as e:  # a check that needs the data (execute removed the directory)
    return _err(str(e))
  _print_summary(summary)
  return 0


@dataclasses.dataclass(frozen=True)
class AllOptions:
  """Every experiment on its defaults (or its tiny SMOKE config), then one table."""

  runs_dir: str = _runs.DEFAULT_RUNS_ROOT
  """root of the run directories"""
  smoke: bool = False
  """every experiment on its tiny SMOKE config"""


@dataclasses.dataclass(frozen=True)
class RerunOptions:
  """Reruns a saved config and compares the summaries (exit 1 on any difference)."""

  run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
  """the run directory to rerun"""
  resume: bool = False
  """continue an interrupted run in place from its last checkpoint"""
  runs_dir: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
  """root for the new run; None: the original run's root"""


def _options(cls, command, argv):
  """``cls`` from ``argv`` with tyro; an unknown option is a ConfigError."""
  args, unknown = _runs.tyro_cli(cls, argv, prog=f"python -m experiments {command}")
  if unknown:
    raise _runs.ConfigError(
      f"{command}: unknown argument {unknown[0]!r} (see `python -m experiments {command} --help`)"
    )
  return args


def cmd_all(argv) -> int:
  args, code = _parse(_options, AllOptions, "all", argv)
  if args is None:
    return code
  rows, failed = [], False
  for name in REGISTRY:
    module = load(name)
    run_dir = _runs.new_run_dir(args.runs_dir, module.NAME)
    print(f"== {name}: {run_dir}", flush=True)
    try:
      summary = _runs.execute(module, module.SMOKE if args.smoke else module.Config(), run_dir)
    except Exception as e:  # noqa: BLE001 - one broken experiment must not hide the others
      failed = True
      print(f"== {name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
      rows.append((name, "-", "FAILED", "-"))
      continue
    seconds = _runs.read_json(run_dir / "timing.json")["wall_seconds"]
    flat = _runs.flatten(summary)
    keys = [k for k in getattr(module, "HEADLINE", flat) if k in flat]
    for i, k in enumerate(keys):
      rows.append((name if i == 0 else "", k, _runs._fmt(flat[k]), f"{seconds:.1f}" if i == 0 else ""))
  print()
  print(_runs.format_table(("experiment", "figure", "value", "seconds"), rows))
  return 1 if failed else 0


def _load_run(run_dir):
  name, values = _runs.load_run(run_dir)
  module = load(name)
  return name, module, _runs.config_from_dict(module.Config, values, experiment=name)


def cmd_rerun(argv) -> int:
  args, code = _parse(_options, RerunOptions, "rerun", argv)
  if args is None:
    return code
  run_dir = Path(args.run_dir)
  loaded, code = _parse(_load_run, run_dir)
  if loaded is None:
    return code
  name, module, config = loaded
  if args.resume:
    if (run_dir / "summary.json").exists():
      print(f"{run_dir} is already complete; nothing to resume")
      return 0
    print(f"{name}: resuming {run_dir}", flush=True)
    summary = _runs.execute(module, config, run_dir, resume=True)
    _print_summary(summary)
    return 0
  old_path = run_dir / "summary.json"
  if not old_path.exists():
    return _err(f"{run_dir} has no summary.json (interrupted? use --resume)")
  old = _runs.read_json(old_path)
  root = args.runs_dir or run_dir.parent.parent
  new_dir = _runs.new_run_dir(root, name)
  print(f"{name}: rerunning {run_dir} into {new_dir}", flush=True)
  new = _runs.execute(module, config, new_dir)
  same, table = _runs.compare_summaries(old, new)
  print(table)
  print("summaries identical" if same else "summaries DIFFER")
  return 0 if same else 1


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  cmd, rest = argv[0], argv[1:]
  commands = {"list": cmd_list, "run": cmd_run, "all": cmd_all, "rerun": cmd_rerun}
  if cmd not in commands:
    return _err(f"unknown command {cmd!r}\n{USAGE}")
  return commands[cmd](rest)


if __name__ == "__main__":
  sys.exit(main())
