"""The lecture's worked numbers recomputed with jaxsoft: softmax, cross-entropy, the heights' Normal MLE, Monte Carlo pi.

Each row holds the value printed in the lecture, the value jaxsoft computes and
whether they agree at the lecture's precision (its number of decimals; for the
Monte Carlo estimate, pi inside the estimate's 99.7% interval).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoft
from experiments import _runs

NAME = "lecture"
HEADLINE = ("rows_matching", "rows_total", "cross_entropy", "status.softmax.1")

LOGITS = [0.9, 1.2, -0.4]
TRUE_CLASS = 1
HEIGHTS = [164.95, 165.35, 165.76, 166.16, 167.78, 168.99, 169.80, 170.20, 171.82, 172.63]


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  """key of the Monte Carlo estimate of pi"""
  mc_samples: int = 2**20
  """Monte Carlo points for the estimate of pi"""

  def __post_init__(self):
    _runs.require_positive(NAME, self, "mc_samples")


# A tiny config for smoke tests and `--smoke` (seconds, not minutes): same code paths.
SMOKE = Config(mc_samples=2**16)


def _decimals(text: str) -> int:
  return len(text.split(".")[1]) if "." in text else 0


def _row(key, name, lecture: str, computed, *, status=None):
  """A table row: "match" when ``computed`` rounds to the lecture's value,
  "close" when it is within one unit of the lecture's last decimal (the lecture
  rounds its softmax to [0.38, 0.52, 0.10] so that it sums to 1, although
  p[1] = 0.5147), "DIFFERS" otherwise."""
  computed = float(computed)
  if status is None:
    d = _decimals(lecture)
    if round(computed, d) == round(float(lecture), d):
      status = "match"
    elif abs(computed - float(lecture)) <= 10.0**-d * (1 + 1e-6):
      status = "close"
    else:
      status = "DIFFERS"
  return {"key": key, "name": name, "lecture": lecture, "computed": computed, "status": status}


def _softmax_rows():
  x = jnp.asarray(LOGITS, jnp.float32)
  e = jnp.exp(x)
  p = jaxsoft.softmax(x)
  ce = jaxsoft.cross_entropy(x[None], jnp.asarray([TRUE_CLASS]))
  rows = [
    _row(f"exp.{i}", f"exp({v})", lec, e[i])
    for i, (v, lec) in enumerate(zip(LOGITS, ("2.46", "3.32", "0.67")))
  ]
  # The normalizer through jaxsoft's stable logsumexp, not the naive sum.
  rows.append(_row("sum_exp", "sum of exp = exp(logsumexp)", "6.45", jnp.exp(jaxsoft.logsumexp(x))))
  rows += [_row(f"softmax.{i}", f"softmax[{i}]", lec, p[i]) for i, lec in enumerate(("0.38", "0.52", "0.10"))]
  rows.append(_row("cross_entropy", "cross-entropy, true class 1", "0.66", ce))
  rows.append(_row("cross_entropy_exact", "cross-entropy, true class 1 (exact)", "0.6641", ce))
  return rows


def _heights_rows():
  res = jaxsoft.fit_distribution("normal", jnp.asarray(HEIGHTS, jnp.float32))
  return [
    _row("heights.loc", "heights MLE loc", "168.344", res.params["loc"]),
    _row("heights.scale", "heights MLE scale (1/n variance)", "2.6207", res.params["scale"]),
  ]


def _pi_rows(config):
  quarter_disc = lambda x: 4.0 * (jnp.sum(x * x) <= 1.0).astype(jnp.float32)
  res = jaxsoft.integrate(
    quarter_disc,
    jax.random.key(config.seed),
    lower=jnp.zeros(2),
    upper=jnp.ones(2),
    n=config.mc_samples,
    method="mc",
  )
  est, se = float(res.estimate), float(res.stderr)
  status = "match" if abs(est - math.pi) <= 3 * se else "DIFFERS"
  return [
    _row("pi.estimate", "Monte Carlo pi", "3.14159", est, status=status),
    _row("pi.stderr", "Monte Carlo pi stderr", "-", se, status="info"),
  ]


def run(config: Config, ctx) -> dict:
  bar = ctx.progress(total=3, desc=NAME)
  rows = []
  for part in (_softmax_rows, _heights_rows, lambda: _pi_rows(config)):
    rows += part()
    bar.update()
  bar.close()
  for i, r in enumerate(rows):
    ctx.log(i, **r)
  table = [(r["name"], r["lecture"], f"{r['computed']:.6g}", r["status"]) for r in rows]
  from experiments._runs import format_table

  print(format_table(("quantity", "lecture", "jaxsoft", ""), table))
  _plot(ctx)
  checked = [r for r in rows if r["status"] in ("match", "close", "DIFFERS")]
  summary = {r["key"]: r["computed"] for r in rows}
  summary.update({f"status.{r['key']}": r["status"] for r in rows})
  summary.update(
    {
      "rows_total": len(checked),
      "rows_matching": sum(r["status"] in ("match", "close") for r in checked),
    }
  )
  return summary


def _plot(ctx):
  import matplotlib.pyplot as plt

  p = np.asarray(jaxsoft.softmax(jnp.asarray(LOGITS)))
  fig, axes = plt.subplots(1, 2, figsize=(8, 3))
  axes[0].bar(range(3), LOGITS, color="C0")
  axes[0].set(title="logits", xticks=range(3), xlabel="class", ylabel="logit")
  axes[1].bar(range(3), p, color=["C1" if i == TRUE_CLASS else "C0" for i in range(3)])
  axes[1].set(
    title=f"softmax (CE of class {TRUE_CLASS} = {-np.log(p[TRUE_CLASS]):.4f})",
    xticks=range(3),
    ylim=(0, 1),
    xlabel="class (orange: the true class)",
    ylabel="probability",
  )
  ctx.save_figure(fig, "softmax")
