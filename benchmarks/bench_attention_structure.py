"""Attention for real batches: windows, packed documents, lengths and decoding, and the default rule.

B=1, N=8, H=64, float32. Every time is a median measured in this process,
next to its reference in the same run: full causal attention at the same
length for the structured cases (the chunked path visits only the blocks
that hold an allowed pair, so the ratio follows the allowed fraction), and
``jax.nn.dot_product_attention`` with the equivalent options where it can
hold the ``T x S`` logits. Peak memory is the RSS of a fresh subprocess that
compiles and runs one forward+backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import fmt_bytes, fmt_time, median_time, peak_rss, table
from jaxsoft.attention import scaled_dot_product_attention

N, H = 8, 64


def _inputs(B, T, S=None, seed=0):
  rng = np.random.default_rng(seed)
  S = T if S is None else S
  shapes = ((B, T, N, H), (B, S, N, H), (B, S, N, H))
  return tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)


def _jitted(f, backward):
  if backward:
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v)), argnums=(0, 1, 2)))
  return jax.jit(f)


def _time(f, args, backward, repeats):
  compiled = _jitted(f, backward).lower(*args).compile()
  return median_time(compiled, *args, repeats=repeats, warmup=1)


def _ours(impl="chunked", **options):
  return lambda q, k, v: scaled_dot_product_attention(q, k, v, implementation=impl, **options)


def _jax_nn(**options):
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla", **options)


def _packed_segments(T, docs):
  return jnp.asarray(np.repeat(np.arange(docs), T // docs)[None], jnp.int32)


def memory_case(T: int, window: int):
  """One forward+backward of causal windowed attention (for ``peak_rss`` in a fresh subprocess)."""
  f = _ours(is_causal=True, local_window_size=(window, 0))
  return _jitted(f, True)(*_inputs(1, T))


def _structured_rows(T, repeats, with_jax_nn):
  """(case, implementation, fwd, fwd+bwd) rows at length T, the first being full causal."""
  half = jnp.array([T // 2], jnp.int32)
  window = max(T // 64, 16)
  cases = [
    ("causal (reference)", dict(is_causal=True)),
    (f"causal, window ({window}, 0)", dict(is_causal=True, local_window_size=(window, 0))),
    (f"causal, 8 packed documents of {T // 8}", dict(is_causal=True, segment_ids=_packed_segments(T, 8))),
    ("not causal, full length (reference)", dict()),
    (f"not causal, key_value_seq_lengths = {T // 2}", dict(key_value_seq_lengths=half)),
  ]
  args = _inputs(1, T)
  rows = []
  for name, opts in cases:
    impls = [("chunked", _ours(**opts))]
    if with_jax_nn and "segment_ids" not in opts:
      impls.append(("jax.nn", _jax_nn(**opts)))
    for impl, f in impls:
      rows.append((name, impl, _time(f, args, False, repeats), _time(f, args, True, repeats)))
  return rows


def _decode_rows(lengths, repeats):
  rows = []
  for S in lengths:
    B = 8
    args = _inputs(B, 1, S)
    filled = jnp.asarray(np.linspace(S // 4, S, B).astype(np.int32))
    impls = [
      ("chunked", _ours("chunked", key_value_seq_lengths=filled)),
      ("dense", _ours("dense", key_value_seq_lengths=filled)),
      ("jax.nn", _jax_nn(key_value_seq_lengths=filled)),
    ]
    for impl, f in impls:
      rows.append((S, impl, _time(f, args, False, repeats)))
  return rows


def _default_rule_rows(shapes, repeats):
  rows = []
  for B, T in shapes:
    args = _inputs(B, T)
    for causal in (False, True):
      times = {
        (impl, backward): _time(_ours(impl, is_causal=causal), args, backward, repeats)
        for impl in ("dense", "chunked")
        for backward in (False, True)
      }
      rows.append((B, T, causal, times))
  return rows


def _ratio(a, b):
  return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else "-"


def run(quick: bool) -> str:
  T = 1024 if quick else 8192
  repeats = 1 if not quick else 3
  rows = _structured_rows(T, repeats, with_jax_nn=T <= 4096)
  jax_nn_T = 1024 if quick else 4096
  rows_nn = _structured_rows(jax_nn_T, repeats, with_jax_nn=True) if not quick else []
  out = [
    "## Attention for real batches",
    "",
    f"B=1, N={N}, H={H}, float32, T=S, chunked path with its default blocks (forward "
    "(512, 256) under a causal or windowed band, (1024, 512) otherwise; backward (512, 256)). "
    "Ratio: this case's time / the reference case's time (full causal, or the full "
    "length), in the same process.",
    "",
  ]
  for length, rs in ((T, rows), (jax_nn_T, rows_nn)):
    if not rs:
      continue
    current, table_rows = {}, []
    for name, impl, fwd, both in rs:
      if "(reference)" in name:
        current[impl] = (fwd, both)
      base = current.get(impl, (None, None))
      table_rows.append(
        [length, name, impl, fmt_time(fwd), _ratio(fwd, base[0]), fmt_time(both), _ratio(both, base[1])]
      )
    out += [
      table(["T", "case", "implementation", "forward", "ratio", "fwd+bwd", "ratio"], table_rows),
      "",
    ]
  T_mem = 8192 if quick else 65536
  mem = peak_rss("benchmarks.bench_attention_structure:memory_case", timeout=900, T=T_mem, window=512)
  out += [
    f"Peak RSS of one forward+backward, causal with a (512, 0) window, T=S={T_mem}: {fmt_bytes(mem)} "
    "(includes about 0.3 GiB of Python and JAX).",
    "",
    "### Decoding: one query per row, B=8, the cache filled from S/4 to S (key_value_seq_lengths)",
    "",
  ]
  dec = _decode_rows((1024,) if quick else (4096, 65536), repeats=3)
  out += [table(["S", "implementation", "forward"], [[S, impl, fmt_time(t)] for S, impl, t in dec]), ""]
  out += [
    "### The default rule: dense or chunked (N=8, H=64, float32)",
    "",
  ]
  shapes = ((8, 128),) if quick else ((32, 128), (8, 256), (4, 512), (1, 1024))
  rule = _default_rule_rows(shapes, repeats=3)
  out.append(
    table(
      [
        "B",
        "T=S",
        "causal",
        "dense fwd",
        "chunked fwd",
        "chunked/dense",
        "dense fwd+bwd",
        "chunked fwd+bwd",
        "chunked/dense",
      ],
      [
        [
          B,
          T_,
          "yes" if c else "no",
          fmt_time(t["dense", False]),
          fmt_time(t["chunked", False]),
          _ratio(t["chunked", False], t["dense", False]),
          fmt_time(t["dense", True]),
          fmt_time(t["chunked", True]),
          _ratio(t["chunked", True], t["dense", True]),
        ]
        for B, T_, c, t in rule
      ],
    )
  )
  try:
    import torch  # noqa: F401
  except ImportError:
    out += ["", "PyTorch is not importable in this environment: no torch rows."]
  return "\n".join(out)
