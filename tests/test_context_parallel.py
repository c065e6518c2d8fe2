"""Context-parallel (ring) attention on 4 and 8 simulated CPU devices.

Everything runs in ONE subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (it must be set before
jax is imported): it computes the ring attention, forward and backward, and
its single-device reference (the dense path, or the chunked path under
dropout, whose bits the ring must reproduce), in float64, and the trace-time
errors; the tests here compare them. The structure options of every case
compose several options, so that few programs are compiled.
"""

import functools
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

# Simulated devices run in a subprocess that compiles every sharded program: an
# end-to-end check, run by `pytest -m slow` (and in CI), not by the quick default run.
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from jaxsoft.attention import multi_head_attention, init_multi_head_attention
    from jaxsoft.attention import scaled_dot_product_attention as sdpa

    jax.config.update("jax_enable_x64", True)
    out_path, which = sys.argv[1], sys.argv[2]
    assert len(jax.devices()) == 8, jax.devices()
    B, T, N, K, H = 2, 32, 2, 1, 4  # two query heads share a key head
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(B, T, N, H)) * 2, rng.normal(size=(B, T, N, H))
    k, v = rng.normal(size=(B, T, K, H)) * 2, rng.normal(size=(B, T, K, H))
    g_lse, sink = rng.normal(size=(B, T, N)), rng.normal(size=(N,))
    packed = np.sort(rng.integers(0, 4, size=(B, T)), axis=1)  # packed documents
    shuffled = rng.integers(0, 2, size=(B, T))  # ids that do not increase

    def mesh(D, explicit):
      kind = AxisType.Explicit if explicit else AxisType.Auto
      return jax.make_mesh((D,), ("seq",), axis_types=(kind,), devices=jax.devices()[:D])

    # name: (devices, explicit mesh, options, with sinks, dropout)
    FAST = {
      "causal_packed_d4": (4, False, dict(is_causal=True, segment_ids=packed, query_seq_lengths=[30, 17],
                                          key_value_seq_lengths=[32, 25], logit_soft_cap=2.0), True, False),
      "window_d8": (8, True, dict(local_window_size=(3, 6), key_value_seq_lengths=[32, 21]), False, False),
      "dropout_causal_d8": (8, True, dict(is_causal=True), False, "forward"),
    }
    SLOW = {
      "plain_d4": (4, False, dict(), False, False),
      "causal_window_d4": (4, True, dict(is_causal=True, local_window_size=(5, 0)), True, False),
      "causal_packed_d8": (8, True, FAST["causal_packed_d4"][2], True, False),
      "window_shuffled_d4": (4, False, dict(local_window_size=6, segment_ids=shuffled), False, False),
      "bottom_right_d8": (8, False, dict(is_causal="bottom_right", query_seq_lengths=[9, 32]), False, False),
      "dropout_causal_d4": (4, False, dict(is_causal=True), False, True),  # blocks of 2 in chunks of 4
    }

    def attend(impl, options, with_sink, dropout, mesh=None):
      # Output, lse and (unless dropout == "forward") the gradients of <g, out> + <g_lse, lse>.
      o = {n: np.array(x) if isinstance(x, list) else x for n, x in options.items()}
      if dropout:
        o.update(dropout_rate=0.3, dropout_key=jax.random.key(3), block_size=2)
      args = (q, k, v, sink)
      if mesh is not None:  # the ring's inputs arrive sharded along the sequence
        o.update(mesh=mesh, axis_name="seq")
        args = [jax.device_put(x, NamedSharding(mesh, P(None, "seq"))) for x in args[:3]] + [sink]

      def f(q, k, v, sink):
        r = sdpa(q, k, v, implementation=impl, return_residual=True,
                 sink_logits=sink if with_sink else None, **o)
        return r.output, r.lse

      def run(q, k, v, sink):
        if dropout == "forward":
          return f(q, k, v, sink)
        (out, lse), vjp = jax.vjp(f, q, k, v, sink)
        return (out, lse) + vjp((g, g_lse))

      return [np.asarray(x) for x in jax.jit(run)(*args)]

    results = {}
    for name, (D, explicit, options, with_sink, dropout) in (FAST if which == "fast" else SLOW).items():
      m = mesh(D, explicit)
      results[name + "/ring"] = attend("ring", options, with_sink, dropout, mesh=m)
      results[name + "/reference"] = attend("chunked" if dropout else "dense", options, with_sink, dropout)

    if which == "slow":
      # The layer passes the mesh through.
      m = mesh(4, False)
      params = init_multi_head_attention(jax.random.key(0), d_model=8, num_heads=2, num_kv_heads=1)
      x = jax.device_put(rng.normal(size=(B, T, 8)), NamedSharding(m, P(None, "seq")))
      for impl, extra in (("ring", dict(mesh=m)), ("reference", dict(implementation="dense"))):
        layer = jax.jit(lambda x: multi_head_attention(params, x, is_causal=True, **extra))
        results["layer/" + impl] = [np.asarray(layer(x))]
      # Under vmap (over a leading axis: each slice is one unbatched call).
      for impl, extra in (("ring", dict(mesh=m)), ("reference", dict(implementation="dense"))):
        one = lambda x: sdpa(x, x, x, is_causal=True, **extra)
        results["vmap/" + impl] = [np.asarray(jax.jit(jax.vmap(one))(q[:, :, :1]))]

    if which == "fast":
      # Trace-time errors.
      errors = {}
      m4 = mesh(4, False)
      mesh2d = jax.make_mesh((2, 4), ("data", "seq"), axis_types=(AxisType.Auto,) * 2)
      bad = {
        "no_mesh": lambda: sdpa(q, k, v, implementation="ring"),
        "not_a_mesh": lambda: sdpa(q, k, v, implementation="ring", mesh="seq"),
        "axis_missing": lambda: sdpa(q, k, v, mesh=m4, axis_name="model"),
        "axis_ambiguous": lambda: sdpa(q, k, v, mesh=mesh2d),
        "length": lambda: sdpa(q[:, :30], k[:, :30], v[:, :30], mesh=m4),
        "zigzag_length": lambda: sdpa(q[:, :28], k[:, :28], v[:, :28], mesh=m4, is_causal=True),
        "mask": lambda: sdpa(q, k, v, mesh=m4, mask=np.ones((T, T), bool)),
        "bias": lambda: sdpa(q, k, v, mesh=m4, bias=np.zeros((T, T))),
        "weights": lambda: sdpa(q, k, v, mesh=m4, return_weights=True),
        "dropout_blocks": lambda: sdpa(q, k, v, mesh=m4, dropout_rate=0.1, dropout_key=jax.random.key(0),
                                       block_size=3),
        "mesh_without_ring": lambda: sdpa(q, k, v, mesh=m4, implementation="chunked"),
      }
      for name, call in bad.items():
        try:
          call()
          errors[name] = "no error"
        except (TypeError, ValueError) as e:
          errors[name] = str(e)
      results["errors"] = [np.array([f"{n}\\t{e}" for n, e in errors.items()])]
    np.savez(out_path, **{f"{n}/{i}": x for n, arrays in results.items() for i, x in enumerate(arrays)})
    print("OK")
""")


@functools.cache
def _results(which):
  """Runs SCRIPT once per ``which`` ("fast" or "slow") on 8 simulated devices; returns its arrays."""
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.npz")
    proc = subprocess.run(
      [sys.executable, "-c", SCRIPT, path, which], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    out = {}
    with np.load(path) as f:
      for n in f.files:  # "name/i": the i-th array of a result
        name, i = n.rsplit("/", 1)
        out.setdefault(name, {})[int(i)] = f[n]
    return {name: [arrays[i] for i in range(len(arrays))] for name, arrays in out.items()}


def _check_case(which, name, tol):
  res = _results(which)
  got, want = res[name + "/ring"], res[name + "/reference"]
  labels = ["output", "lse", "d query", "d key", "d value", "d sink_logits"]
  for label, a, b in zip(labels, got, want):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if label == "lse":
      np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=name)
      a, b = np.where(np.isinf(a), 0, a), np.where(np.isinf(b), 0, b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{name}: {label}")


@pytest.mark.parametrize(
  "name",
  [
    "causal_packed_d4",  # zigzag layout; segments, lengths, soft cap, sinks
    "window_d8",  # contiguous layout, a ring of 3 steps of 8; lengths; explicit mesh
  ],
)
def test_forward_and_gradients_equal_single_device_attention(name):
  _check_case("fast", name, 1e-10)


def test_dropout_draws_the_bits_of_the_single_device_chunked_path():
  # Keyed by global (query block, key block): 8 devices in the zigzag layout
  # draw what one device draws (the backward pass: dropout_causal_d4 below).
  _check_case("fast", "dropout_causal_d8", 1e-10)


ERRORS = {
  "no_mesh": 'mesh must be a jax.sharding.Mesh with implementation="ring", got None',
  "not_a_mesh": "mesh must be a jax.sharding.Mesh, got str",
  "axis_missing": "axis_name must be one of the mesh's axes ('seq',), got 'model'",
  "axis_ambiguous": "axis_name must name the mesh axis that splits the sequence, one of ('data', 'seq')",
  "length": "query must have a sequence length divisible by the 4 devices of mesh axis 'seq', got 30",
  "zigzag_length": "query must have a sequence length divisible by 8 under is_causal",
  "mask": 'mask must be None with implementation="ring"',
  "bias": 'bias must be None with implementation="ring"',
  "weights": 'return_weights must be False with implementation="ring"',
  "dropout_blocks": "block_size must divide the chunks of 8 queries and 8 keys held by each device",
  "mesh_without_ring": 'mesh must be None unless implementation="ring", got implementation="chunked"',
}


def test_bad_input_gets_a_clear_error():
  got = dict(line.split("\t", 1) for line in _results("fast")["errors"][0])
  for name, message in ERRORS.items():
    assert got[name].startswith("scaled_dot_product_attention: "), (name, got[name])
    assert message in got[name], (name, got[name])


@pytest.mark.slow
@pytest.mark.parametrize(
  "name",
  [
    "plain_d4",
    "causal_window_d4",
    "causal_packed_d8",
    "window_shuffled_d4",
    "bottom_right_d8",
    "dropout_causal_d4",
  ],
)
def test_more_compositions(name):
  _check_case("slow", name, 1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["layer", "vmap"])
def test_multi_head_layer_and_vmap(name):
  got = np.asarray(_results("slow")[name + "/ring"][0], np.float64)
  want = np.asarray(_results("slow")[name + "/reference"][0], np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
