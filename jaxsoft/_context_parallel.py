r"""Context-parallel (ring) attention: the sequence split over the devices of one mesh axis.

Queries, keys and values are split along the sequence into ``D`` shards, one
per device of a mesh axis, with JAX's own SPMD machinery (``jax.shard_map``
and ``lax.ppermute``). Each device keeps its query shard; the key/value shards
travel around the ring, one hop per step, and each device runs the chunked
kernel (:mod:`jaxsoft._chunked_attention`) of its queries against the shard
it holds. The partial results merge by their log-normalizers with the online
logsumexp (:mod:`jaxsoft._online_logsumexp`): a shard's output is normalized
by its own :math:`e^{\mathrm{lse}}`, so it enters the running state as a
partial with max ``lse`` and sum 1 (sum 0 for a row that it gives nothing).
Liu et al. (2023), "Ring Attention with Blockwise Transformers".

**Global positions.** A shard's structure (causal band, window, lengths) is
that of its place in the whole sequence: the kernel takes each shard's
offset, so the block skipping, the masks and the dropout bits are those of
the whole sequence. Dropout uses the blocks of the whole sequence, keyed by
the global (query block, key block), so when they divide the shards the
same bits are drawn for any number of devices as by the single-device
chunked path.

**Only the steps that matter.** Which ring steps can hold an allowed pair
follows from the band (causal, window) and the static shard layout: a window
shorter than a shard needs only the neighbouring shards, so the ring makes
only those steps (starting with one jump to the first shard needed). Inside a
step a pair of shards with no allowed block (from lengths or segments) is
skipped by a ``lax.cond``.

**Zigzag.** Under ``is_causal`` the contiguous layout gives device ``d``
about ``d + 1`` shards of work, so the last device sets the pace. When every
ring step is needed, the sequence is cut into ``2D`` chunks and device ``d``
holds chunks ``d`` and ``2D - 1 - d`` (one early, one late: Brandon et al.
2023, "Striped Attention", and Llama 3's context parallelism): every device
does the same work. The permutation is applied to the inputs and undone on
the outputs, so the caller sees the natural order.

**Backward pass.** A custom VJP keeps only the local shards, the output and
the log-normalizer, and runs the ring again: each device accumulates its
query gradient, and the key/value gradients travel with their shards and
are sent home at the end. Memory per device is ``O(T / D)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsoft import _attention_structure as structure
from jaxsoft import _chunked_attention as chunked
from jaxsoft import _online_logsumexp as online
from jaxsoft import _validate as V


class Ring(NamedTuple):
  """The static layout of one call.

  Attributes:
    mesh: the mesh; ``axis``: the name of its axis that splits the sequence.
    devices: ``D``, the size of that axis.
    chunks: 1 (contiguous: device ``d`` holds shard ``d``) or 2 (zigzag).
    first: the ring step the loop starts at (device ``d`` first holds the
      keys of device ``d - first``).
    steps: the number of ring steps (at most ``D``).
    plan: the chunked kernel's plan for one query chunk against one key chunk.
    rate: the dropout rate.
  """

  mesh: Mesh
  axis: str
  devices: int
  chunks: int
  first: int
  steps: int
  plan: chunked.BlockPlan
  rate: float


# ----------------------------------------------------------------------------
# The static layout and its checks


def _chunk(d, a, D):
  """The index of the ``a``-th chunk held by device ``d``: ``d``, or ``2D - 1 - d`` (zigzag).

  Arithmetic rather than a branch: ``d`` and ``a`` may be traced.
  """
  return d + a * (2 * D - 1 - 2 * d)


def _steps(bd: structure.Band, T: int, S: int, D: int, chunks: int) -> tuple[int, int]:
  """``(first, steps)``: the shortest arc of ring steps that holds every step with an allowed pair.

  Step ``r`` brings device ``d`` the keys of device ``d - r``; it is needed
  when the band meets one of its (query chunk, key chunk) rectangles of
  positions on some device.
  """
  cq, ck = T // (chunks * D), S // (chunks * D)

  def meets(tc, sc):
    t0, t1, s0, s1 = tc * cq, (tc + 1) * cq - 1, sc * ck, (sc + 1) * ck - 1
    return (bd.hi is None or s0 - t1 <= bd.hi) and (bd.lo is None or s1 - t0 >= bd.lo)

  need = [
    any(
      meets(_chunk(d, a, D), _chunk((d - r) % D, b, D))
      for d in range(D)
      for a in range(chunks)
      for b in range(chunks)
    )
    for r in range(D)
  ]
  if all(need):
    return 0, D
  if not any(need):
    return 0, 0
  # Leave out the longest cyclic run of steps that are not needed.
  gap, start = max((next(n for n in range(D + 1) if need[(r + n) % D]), r) for r in range(D))
  return (start + gap) % D, D - gap


def ring(fn, mesh, axis_name, *, T, S, band, cap, is_causal, blocks, dropout_rate) -> Ring:
  """The checked :class:`Ring` of a call; errors are labelled ``fn`` and name the argument."""
  if mesh is None:
    V.fail(fn, "mesh", 'be a jax.sharding.Mesh with implementation="ring"', None, exc=TypeError)
  if not isinstance(mesh, Mesh):
    V.fail(fn, "mesh", "be a jax.sharding.Mesh", type(mesh).__name__, exc=TypeError)
  if axis_name is None:
    if len(mesh.axis_names) != 1:
      V.fail(fn, "axis_name", f"name the mesh axis that splits the sequence, one of {mesh.axis_names}", None)
    axis_name = mesh.axis_names[0]
  if axis_name not in mesh.axis_names:
    V.fail(fn, "axis_name", f"be one of the mesh's axes {mesh.axis_names}", repr(axis_name))
  D = mesh.shape[axis_name]
  where = f"the {D} devices of mesh axis {axis_name!r}"
  for name, n in (("query", T), ("key", S)):
    if n % D:
      V.fail(fn, name, f"have a sequence length divisible by {where}", n)
  first, steps = _steps(band, T, S, D, 1)
  chunks = 2 if (is_causal and steps == D and D > 1) else 1
  if chunks == 2:
    for name, n in (("query", T), ("key", S)):
      if n % (2 * D):
        why = f"divisible by {2 * D} under is_causal (two chunks on each of {where}: the zigzag layout)"
        V.fail(fn, name, f"have a sequence length {why}", n)
    first, steps = _steps(band, T, S, D, 2)
  cq, ck = T // (chunks * D), S // (chunks * D)
  if not (cq and ck):
    return Ring(mesh, axis_name, D, chunks, first, steps, None, float(dropout_rate))
  plan = chunked.make_plan(cq, ck, band, cap, blocks)
  if dropout_rate > 0:
    # Dropout bits are keyed by block: the blocks of the unsplit sequence, so
    # that every device count draws what one device draws.
    whole = chunked.make_plan(T, S, band, cap, blocks)
    if cq % whole.bq or ck % whole.bk:
      want = (
        f"divide the chunks of {cq} queries and {ck} keys held by each device when dropout_rate > 0 "
        f"(dropout is keyed by the blocks ({whole.bq}, {whole.bk}) of the whole sequence)"
      )
      V.fail(fn, "block_size", want, blocks)
    plan = plan._replace(bq=whole.bq, bk=whole.bk)
  return Ring(mesh, axis_name, D, chunks, first, steps, plan, float(dropout_rate))


# ----------------------------------------------------------------------------
# The zigzag permutation (of the shards, on the devices)


def _zigzag_perms(D):
  """Two device permutations: ``h``-th half of device ``e`` (chunk ``2e + h``) -> its zigzag device."""
  home = lambda c: c if c < D else 2 * D - 1 - c  # noqa: E731
  return [[(e, home(2 * e + h)) for e in range(D)] for h in (0, 1)]


def _swap_if_odd(x0, x1, d):
  """``(x0, x1)`` on an even device ``d``, ``(x1, x0)`` on an odd one."""
  even = d % 2 == 0
  return jnp.where(even, x0, x1), jnp.where(even, x1, x0)


def _zigzag(x, axis, cfg: Ring, inverse=False):
  """Contiguous shards (device ``d`` holds chunks ``2d, 2d + 1``) <-> zigzag (``d, 2D - 1 - d``).

  Chunk ``2e + h`` goes to device ``d = 2e + h`` when that is below ``D`` (its
  first slot), else to ``d = 2D - 1 - 2e - h`` (its second slot), so each half
  moves by one ``ppermute``; on an odd device the two arrive swapped.
  """
  if x is None:
    return None
  d = lax.axis_index(cfg.axis)
  perms = _zigzag_perms(cfg.devices)
  halves = jnp.split(x, 2, axis=axis)
  if inverse:
    sent = _swap_if_odd(*halves, d)
    back = [lax.ppermute(h, cfg.axis, [(b, a) for a, b in p]) for h, p in zip(sent, perms)]
    return jnp.concatenate(back, axis=axis)
  got = [lax.ppermute(h, cfg.axis, p) for h, p in zip(halves, perms)]
  return jnp.concatenate(_swap_if_odd(*got, d), axis=axis)


# ----------------------------------------------------------------------------
# One device


def _split(x, axis, chunks, multiple):
  """The ``chunks`` equal parts of ``axis``, each padded to a multiple of ``multiple``, stacked first."""
  if x is None:
    return None
  return jnp.stack([chunked.pad_axis(p, axis, multiple) for p in jnp.split(x, chunks, axis=axis)])


def _join(x, axis, n):
  """The inverse of :func:`_split`: the first ``n`` entries of each part, concatenated."""
  return jnp.concatenate([lax.slice_in_dim(p, 0, n, axis=axis) for p in x], axis=axis)


def _shift(tree, cfg: Ring, by: int):
  """Device ``d`` sends ``tree`` to device ``d + by`` (so it receives that of ``d - by``)."""
  D = cfg.devices
  if by % D == 0:
    return tree
  perm = [(e, (e + by) % D) for e in range(D)]
  return jax.tree.map(lambda x: lax.ppermute(x, cfg.axis, perm), tree)


class _Shards(NamedTuple):
  """One device's chunks, padded to whole blocks and stacked ``[m, ...]``: what stays and what travels."""

  q: jax.Array  # [m,B,K,G,cq,H]
  q_seg: jax.Array | None  # [m,B,cq]
  kv: tuple  # (k [m,B,K,ck,H], v [m,B,K,ck,Hv], kv_seg [m,B,ck] or None)


def _shards(q, k, v, st, cfg: Ring):
  plan, m = cfg.plan, cfg.chunks
  kv = (_split(k, 2, m, plan.bk), _split(v, 2, m, plan.bk), _split(st.kv_seg, 1, m, plan.bk))
  return _Shards(_split(q, 3, m, plan.bq), _split(st.q_seg, 1, m, plan.bq), kv)


def _pairs(shards, kv, st, d, i, cfg: Ring, body, init):
  """Runs ``body(a, b, st_ab, carry)`` over the (query chunk ``a``, key chunk ``b``) pairs of ring step ``i``.

  One loop, so the kernel is compiled once whatever the number of chunks.
  ``st_ab`` is the structure of the pair: its segment ids and the global
  positions of its first query and key.
  """
  m, D = cfg.chunks, cfg.devices
  e = (d - cfg.first - i) % D  # the device whose keys this step holds
  kv_seg = kv[2]

  def pair(p, carry):
    a, b = p // m, p % m
    st_ab = st._replace(
      q_seg=None if shards.q_seg is None else shards.q_seg[a],
      kv_seg=None if kv_seg is None else kv_seg[b],
      q_offset=_chunk(d, a, D) * cfg.plan.t,
      kv_offset=_chunk(e, b, D) * cfg.plan.s,
    )
    return body(a, b, st_ab, carry)

  return lax.fori_loop(0, m * m, pair, init)


def _any(ranges):
  return jnp.any(ranges[:, 1] > ranges[:, 0])


def _forward(q, k, v, sink, st, key, cfg: Ring):
  """Local q [B,K,G,m*cq,H], k, v -> out [B,K,G,m*cq,Hv], lse [B,K,G,m*cq], and both padded and stacked."""
  plan = cfg.plan
  shards = _shards(q, k, v, st, cfg)
  d = lax.axis_index(cfg.axis)
  shape = shards.q.shape[:5] + (1,)
  state = chunked.sink_state(None if sink is None else sink[None], shape, q.dtype)
  acc = jnp.zeros(shape[:5] + (v.shape[-1],), q.dtype)
  lowest = jnp.finfo(q.dtype).min

  def body(a, b, st_ab, carry):
    state, acc, kv = carry
    ks, vs, _ = kv
    key_ranges, _ = chunked.block_ranges(st_ab, plan)
    args = (shards.q[a], ks[b], vs[b], None, None, None, st_ab, key, key_ranges, plan, cfg.rate)
    out, lse = lax.cond(
      _any(key_ranges),
      lambda: chunked.forward(*args),
      lambda: chunked.empty_result(args[0], args[2], None),
    )
    # The shard's output is normalized by exp(lse): a partial with sum 1 (0
    # where the row has nothing allowed in it, and lse the lowest number).
    part = online.Partial(lse[..., None], (lse > lowest)[..., None].astype(q.dtype))
    new, alpha, beta = online.merge(online.Partial(state.m[a], state.s[a]), part)
    state = online.Partial(state.m.at[a].set(new.m), state.s.at[a].set(new.s))
    return state, acc.at[a].set(acc[a] * alpha + out * beta), kv

  def step(i, carry):
    state, acc, kv = carry
    nxt = _shift(kv, cfg, 1)  # independent of this step's work: XLA may overlap the two
    state, acc, _ = _pairs(shards, kv, st, d, i, cfg, body, (state, acc, kv))
    return state, acc, nxt

  kv = _shift(shards.kv, cfg, cfg.first)
  state, acc, _ = lax.fori_loop(0, cfg.steps, step, (state, acc, kv))
  out = acc / online.safe(state.s)
  lse = online.log_normalizer(state)[..., 0]
  return _join(out, 3, plan.t), _join(lse, 3, plan.t), (out, lse)


def _backward(q, k, v, sink, st, key, out, lse, g, g_lse, cfg: Ring):
  plan = cfg.plan
  shards = _shards(q, k, v, st, cfg)
  d = lax.axis_index(cfg.axis)
  g = _split(g, 3, cfg.chunks, plan.bq)
  delta = chunked.row_delta(out, g, _split(g_lse, 3, cfg.chunks, plan.bq))

  def body(a, b, st_ab, carry):
    dqs, (dks, dvs), kv = carry
    ks, vs, _ = kv
    _, query_ranges = chunked.block_ranges(st_ab, plan)
    args = (shards.q[a], ks[b], vs[b], None, None, st_ab, key, query_ranges)
    args += (lse[a], delta[a], g[a], False, plan, cfg.rate)
    dq, dk, dv, _ = lax.cond(
      _any(query_ranges),
      lambda: chunked.backward(*args),
      lambda: (jnp.zeros_like(args[0]), jnp.zeros_like(args[1]), jnp.zeros_like(args[2]), None),
    )
    return dqs.at[a].add(dq), (dks.at[b].add(dk), dvs.at[b].add(dv)), kv

  def step(i, carry):
    dqs, dkv, kv = carry
    dqs, dkv, _ = _pairs(shards, kv, st, d, i, cfg, body, (dqs, dkv, kv))
    # The key/value gradients travel with their shards.
    return (dqs,) + _shift((dkv, kv), cfg, 1)

  ks, vs, _ = shards.kv
  init = (
    jnp.zeros_like(shards.q),
    (jnp.zeros_like(ks), jnp.zeros_like(vs)),
    _shift(shards.kv, cfg, cfg.first),
  )
  dqs, (dks, dvs), _ = lax.fori_loop(0, cfg.steps, step, init)
  # Device d now holds the gradients of the shards of device d - first - steps: send them home.
  dks, dvs = _shift((dks, dvs), cfg, -(cfg.first + cfg.steps))
  dsink = None
  if sink is not None:
    # Each device gives its rows' share: shard_map sums a replicated input's cotangents.
    dsink = chunked.sink_grad(sink[None], lse, delta).sum(0)
  return _join(dqs, 3, plan.t), _join(dks, 2, plan.s), _join(dvs, 2, plan.s), dsink


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _ring_attention(q, k, v, sink, st, key, cfg: Ring):
  out, lse, _ = _forward(q, k, v, sink, st, key, cfg)
  return out, lse


def _ring_fwd(q, k, v, sink, st, key, cfg: Ring):
  out, lse, padded = _forward(q, k, v, sink, st, key, cfg)
  return (out, lse), (q, k, v, sink, st, key, padded)


def _ring_bwd(cfg: Ring, res, cotangents):
  q, k, v, sink, st, key, (out, lse) = res
  g, g_lse = cotangents
  dq, dk, dv, dsink = _backward(q, k, v, sink, st, key, out, lse, g, g_lse, cfg)
  return dq, dk, dv, dsink, None, None


_ring_attention.defvjp(_ring_fwd, _ring_bwd)


# ----------------------------------------------------------------------------
# Entry point


def _device(q, k, v, sink, st, key, cfg: Ring):
  """What one device runs: in the zigzag layout when it has two chunks, the ring, and back."""
  if cfg.chunks == 2:
    q, k, v = _zigzag(q, 3, cfg), _zigzag(k, 2, cfg), _zigzag(v, 2, cfg)
    st = st._replace(q_seg=_zigzag(st.q_seg, 1, cfg), kv_seg=_zigzag(st.kv_seg, 1, cfg))
  out, lse = _ring_attention(q, k, v, sink, st, key, cfg)
  if cfg.chunks == 2:
    out, lse = _zigzag(out, 3, cfg, inverse=True), _zigzag(lse, 3, cfg, inverse=True)
  return out, lse


def _place(ring: Ring, spec, x):
  """``x`` resharded to ``spec``: needed on an explicit mesh axis, where the sharding is part of the type.

  Other explicit axes are dropped (replicated): keeping them would need the
  ring's loop carries typed with them too.
  """
  return None if x is None else jax.reshard(x, NamedSharding(ring.mesh, spec))


def attention(q, k, v, bias, mask, sink, st, dropout_key, *, ring: Ring):
  """Head-major global q, k, v -> out [B,K,G,T,Hv], log-normalizer [B,K,G,T], as the chunked path.

  ``bias`` and ``mask`` must be None (checked by the caller); the other
  arguments are those of :func:`jaxsoft._chunked_attention.attention`.
  """
  del bias, mask
  if ring.plan is None:
    return chunked.empty_result(q, v, sink)
  ax = ring.axis
  seq = lambda ndim, axis: P(*(ax if i == axis else None for i in range(ndim)))  # noqa: E731
  st_specs = structure.Structure(P(), P(), seq(2, 1), seq(2, 1), P(), P())
  in_specs = (seq(5, 3), seq(4, 2), seq(4, 2), P(), st_specs, P())
  out_specs = (seq(5, 3), seq(4, 3))
  args = (q, k, v, sink, st, dropout_key)
  if dict(zip(ring.mesh.axis_names, ring.mesh.axis_types))[ax] == jax.sharding.AxisType.Explicit:
    args = jax.tree.map(functools.partial(_place, ring), in_specs, args, is_leaf=lambda x: isinstance(x, P))
  run = jax.shard_map(
    functools.partial(_device, cfg=ring),
    mesh=ring.mesh,
    in_specs=in_specs,
    out_specs=out_specs,
    axis_names={ax},
    check_vma=False,
  )
  return run(*args)
