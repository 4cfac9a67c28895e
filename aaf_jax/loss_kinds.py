"""The loss kinds (`config.loss.kind`) and the affinity terms each adds to the objective.

The one place a kind is defined: its default field sizes, what it requires of
`config.loss.sizes`, whether it learns the AAF tables, and its (edge, non-edge) terms. step.py
combines the terms into the objective; configs and validation read the rest. Importing this
module does not import jax (config files use it); the terms import the loss math when called.
"""

import dataclasses
from collections.abc import Callable

# config.loss.implementation: how the affinity pair sums are computed (affinity.py reads the
# names from here, so that configs need no jax to check them).
# 'xla' is the default everywhere: the fused 'pallas' kernels become a default only where they
# are measured faster (BENCHMARKS.md).
IMPLEMENTATIONS = ('xla', 'pallas')


def _no_terms(probs, labels, *, num_classes, loss_cfg, tables):
  """Cross-entropy alone: no affinity term."""
  return None


def _affinity_terms(probs, labels, *, num_classes, loss_cfg, tables):
  """The fixed-size affinity field (spec items 1-7) at the one size in `loss_cfg.sizes`."""
  from aaf_jax import affinity

  return affinity.affinity_loss(
    probs,
    labels,
    num_classes=num_classes,
    size=loss_cfg.sizes[0],
    margin=loss_cfg.margin,
    implementation=loss_cfg.implementation,
  )


def _aaf_terms(probs, labels, *, num_classes, loss_cfg, tables):
  """Adaptive affinity fields (spec item 8): per-size terms weighted by the learned tables."""
  import jax.numpy as jnp

  from aaf_jax import affinity

  edges, nonedges = affinity.adaptive_affinity_loss(
    probs,
    labels,
    num_classes=num_classes,
    sizes=tuple(loss_cfg.sizes),
    margin=loss_cfg.margin,
    edge_logits=tables['edge_logits'],
    nonedge_logits=tables['nonedge_logits'],
    implementation=loss_cfg.implementation,
  )
  return jnp.sum(edges), jnp.sum(nonedges)


@dataclasses.dataclass(frozen=True)
class LossKind:
  """One `config.loss.kind`.

  terms(probs [N,h,w,C], labels [N,h,w], *, num_classes, loss_cfg, tables) -> (edge, nonedge)
  scalars, or None for no affinity term; `tables` is params['aaf'] when `learns_tables`.
  """

  name: str
  default_sizes: tuple[int, ...]
  max_sizes: int | None  # how many entries config.loss.sizes may have (None: any number)
  learns_tables: bool  # trains the per-class field-size tables params['aaf'] (ascent)
  terms: Callable


KINDS = {
  kind.name: kind
  for kind in (
    LossKind(
      name='ce', default_sizes=(1, 2, 3), max_sizes=None, learns_tables=False, terms=_no_terms
    ),
    # The fixed-size field uses s = 1 (spec item 7); AAF chooses among 1, 2, 3 (item 8).
    LossKind(
      name='affinity', default_sizes=(1,), max_sizes=1, learns_tables=False, terms=_affinity_terms
    ),
    LossKind(
      name='aaf', default_sizes=(1, 2, 3), max_sizes=None, learns_tables=True, terms=_aaf_terms
    ),
  )
}
LOSS_KINDS = tuple(KINDS)


def get(name: str) -> LossKind:
  if name not in KINDS:
    raise ValueError(f'config.loss.kind={name!r} is unknown; expected one of {LOSS_KINDS}.')
  return KINDS[name]
