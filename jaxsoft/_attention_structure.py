r"""Attention structure given as data: a band (causal, local window), lengths and segments.

A padded, packed and windowed batch allows query ``t`` of batch row ``b`` to
attend key ``s`` when every given condition holds:

* the band: :math:`\mathrm{lo} \le s - t \le \mathrm{hi}` (either side may be
  open), which holds the causal mask (``hi = offset``) and the local window
  (``lo = offset - left``, ``hi = offset + right``) in one static pair, the
  offset being ``S - T`` for a bottom-right alignment and 0 otherwise;
* lengths: :math:`t < L^q_b` and :math:`s < L^{kv}_b`;
* segments: :math:`\mathrm{seg}^q_{bt} = \mathrm{seg}^{kv}_{bs}`.

None of it is ever a ``[T, S]`` array outside the block being computed:
:func:`allowed` builds one ``[bq, bk]`` tile from the conditions, and
:func:`block_mask` decides from per-block summaries (row and column
intervals, the smallest and largest segment id of each block) which
(query block, key block) pairs can hold an allowed pair. Each summary test is
a necessary condition, so the block mask holds every block with an allowed
pair; it is exact for the band and the lengths, and for segments whose ids
do not decrease along the sequence (packed documents).

The band and the lengths are conditions on *positions*, the segment ids are
read by *index*. They differ when the arrays hold one shard of a longer
sequence (context parallelism): :attr:`Structure.q_offset` and
:attr:`Structure.kv_offset` give the global position of index 0, so that a
shard's tiles and block summaries are those of the whole sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Band(NamedTuple):
  """Static bounds on ``s - t``: allowed when ``lo <= s - t <= hi`` (None: open)."""

  lo: int | None = None
  hi: int | None = None


def band(is_causal, window, T: int, S: int) -> Band:
  """The band of ``is_causal`` (False, True or "bottom_right") and ``window`` ((left, right) or None)."""
  offset = S - T if is_causal == "bottom_right" else 0
  lo = hi = None
  if window is not None:
    lo, hi = offset - window[0], offset + window[1]
  if is_causal:
    hi = offset if hi is None else min(hi, offset)
  return Band(lo, hi)


class Structure(NamedTuple):
  """The per-row data of the structure, each None when not given.

  Attributes:
    q_len: ``[B]`` int, the number of real queries of each batch row.
    kv_len: ``[B]`` int, the number of real keys.
    q_seg: ``[B, T]`` int, the segment id of each query.
    kv_seg: ``[B, S]`` int, the segment id of each key.
    q_offset: int scalar, the position of query index 0 (None: 0).
    kv_offset: int scalar, the position of key index 0 (None: 0).
  """

  q_len: jax.Array | None = None
  kv_len: jax.Array | None = None
  q_seg: jax.Array | None = None
  kv_seg: jax.Array | None = None
  q_offset: jax.Array | None = None
  kv_offset: jax.Array | None = None


def _and(a, b):
  return b if a is None else a & b


def _shift(x, offset):
  return x if offset is None else x + offset


def allowed(st: Structure, bd: Band, t0, s0, bq: int, bk: int, s_true: int | None = None):
  """The allowed pairs of the ``[bq, bk]`` tile starting at query index ``t0``, key index ``s0``.

  Returns a boolean ``[bq, bk]`` (no per-row data) or ``[B, bq, bk]``, or
  None when everything is allowed. ``s_true``: key indices at or past it are
  padding (the kernel pads the keys to whole blocks). The segment ids are
  read from ``t0``/``s0`` on, so they must be padded to whole tiles.
  """
  rows = t0 + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  cols = s0 + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  a = None if s_true is None else cols < s_true
  rows, cols = _shift(rows, st.q_offset), _shift(cols, st.kv_offset)  # indices -> positions
  if bd.lo is not None:
    a = _and(a, cols - rows >= bd.lo)
  if bd.hi is not None:
    a = _and(a, cols - rows <= bd.hi)
  if a is not None:
    a = jnp.broadcast_to(a, (bq, bk))
  if st.q_len is not None:
    a = _and(a, rows[None] < st.q_len[:, None, None])
  if st.kv_len is not None:
    a = _and(a, cols[None] < st.kv_len[:, None, None])
  if st.q_seg is not None:
    qs = lax.dynamic_slice_in_dim(st.q_seg, t0, bq, axis=1)
    ks = lax.dynamic_slice_in_dim(st.kv_seg, s0, bk, axis=1)
    a = _and(a, qs[:, :, None] == ks[:, None, :])
  return a


def band_only(st: Structure) -> bool:
  """True when the band (and key padding) is all there is: no per-row lengths or segments."""
  return st.q_len is None and st.kv_len is None and st.q_seg is None


def tile_full(st: Structure, bd: Band, t0, s0, bq: int, bk: int, s_true: int | None = None):
  """Scalar bool: every pair of the tile is allowed by the band, and no key is padding.

  Meant for a structure with ``band_only``; the tile's extreme differences
  ``s - t`` are those of its corners.
  """
  full = jnp.asarray(True) if s_true is None else s0 + bk <= s_true
  t0, s0 = _shift(t0, st.q_offset), _shift(s0, st.kv_offset)  # indices -> positions
  if bd.lo is not None:
    full = full & (s0 - (t0 + bq - 1) >= bd.lo)
  if bd.hi is not None:
    full = full & (s0 + bk - 1 - t0 <= bd.hi)
  return full


def _extent(start, size, true_len, lengths, offset):
  """First and last real index of each of the blocks ``[start, start + size)``: ``[B|1, n]`` each.

  An index is real when it is below ``true_len`` and its position (index +
  ``offset``) below the row's length.
  """
  first = start[None]
  last = jnp.minimum(start + size, true_len)[None] - 1
  if lengths is not None:
    real = lengths if offset is None else lengths - offset
    last = jnp.minimum(last, real[:, None] - 1)
  return first, last


def _seg_range(seg, n, size, last):
  """Smallest and largest segment id of each block over its real positions: ``[B, n]`` each."""
  B, L = seg.shape
  seg = jnp.pad(seg, ((0, 0), (0, n * size - L))).reshape(B, n, size)
  pos = (jnp.arange(n) * size)[:, None] + jnp.arange(size)
  real = pos[None] <= last[..., None]
  info = jnp.iinfo(seg.dtype)
  smallest = jnp.min(jnp.where(real, seg, info.max), axis=-1)
  largest = jnp.max(jnp.where(real, seg, info.min), axis=-1)
  return smallest, largest


def block_mask(st: Structure, bd: Band, T: int, S: int, bq: int, bk: int):
  """``[nq, nk]`` bool: the (query block, key block) pairs that may hold an allowed pair in some row.

  ``T`` and ``S`` are the numbers of query and key indices.
  """
  nq, nk = -(-T // bq), -(-S // bk)
  t_first, t_last = _extent(jnp.arange(nq) * bq, bq, T, st.q_len, st.q_offset)  # [B|1, nq]
  s_first, s_last = _extent(jnp.arange(nk) * bk, bk, S, st.kv_len, st.kv_offset)  # [B|1, nk]
  ok = (t_first <= t_last)[:, :, None] & (s_first <= s_last)[:, None, :]
  # The band meets the rectangle [t_first, t_last] x [s_first, s_last] (as
  # positions) when the range of s - t over it, [s_first - t_last, s_last -
  # t_first], meets [lo, hi].
  shift = _shift(0, st.kv_offset) - _shift(0, st.q_offset)
  if bd.hi is not None:
    ok = ok & (s_first[:, None, :] - t_last[:, :, None] + shift <= bd.hi)
  if bd.lo is not None:
    ok = ok & (s_last[:, None, :] - t_first[:, :, None] + shift >= bd.lo)
  if st.q_seg is not None:
    q_min, q_max = _seg_range(st.q_seg, nq, bq, t_last)
    k_min, k_max = _seg_range(st.kv_seg, nk, bk, s_last)
    ok = ok & (q_min[:, :, None] <= k_max[:, None, :]) & (k_min[:, None, :] <= q_max[:, :, None])
  return ok.any(axis=0)


def ranges(mask):
  """``[n, 2]`` int: per row of a boolean ``[n, m]``, the ``[first, last)`` hull of its True entries."""
  m = mask.shape[1]
  any_ = mask.any(axis=1)
  first = jnp.argmax(mask, axis=1)
  last = m - jnp.argmax(mask[:, ::-1], axis=1)
  return jnp.where(any_[:, None], jnp.stack([first, last], axis=1), 0)
