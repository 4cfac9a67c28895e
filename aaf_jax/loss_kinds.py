"""The loss kinds (`config.loss.kind`) and the implementations of the pair sums, as names.

The one place a kind is defined: its default field sizes, what it requires of
`config.loss.sizes`, whether it learns the AAF tables, and which affinity term it adds to the
objective (objective.py computes the terms). A leaf: it imports neither jax nor the loss math,
so config files and validation can read it cheaply.
"""

import dataclasses

# config.loss.implementation: how the affinity pair sums are computed (affinity.py reads the
# names from here, so that configs need no jax to check them).
# 'xla' is the default everywhere: the fused 'pallas' kernels become a default only where they
# are measured faster (BENCHMARKS.md).
IMPLEMENTATIONS = ('xla', 'pallas')

# The affinity terms a kind can add (objective.py computes each): none, the fixed-size field at
# the one size of config.loss.sizes (spec items 1-7), or adaptive fields over every size
# weighted by the learned tables (spec item 8).
TERMS = ('none', 'fixed', 'adaptive')

# config.loss.tables: how kind 'aaf' trains its per-class field-size tables, as the direction
# of their update (aaf_jax/optim.py): +1 up the objective's gradient ('adversarial', the paper's
# min-max, the default), -1 down it with the network ('descent', min-min), 0 never ('uniform':
# equal weights over the sizes).
TABLE_MODES = {'adversarial': +1, 'descent': -1, 'uniform': 0}
DEFAULT_TABLES = 'adversarial'


@dataclasses.dataclass(frozen=True)
class LossKind:
  """One `config.loss.kind`; `terms` is one of TERMS."""

  name: str
  default_sizes: tuple[int, ...]
  max_sizes: int | None  # how many entries config.loss.sizes may have (None: any number)
  learns_tables: bool  # trains the per-class field-size tables params['aaf'] (ascent)
  terms: str


KINDS = {
  kind.name: kind
  for kind in (
    LossKind(name='ce', default_sizes=(1, 2, 3), max_sizes=None, learns_tables=False, terms='none'),
    # The fixed-size field uses s = 1 (spec item 7); AAF chooses among 1, 2, 3 (item 8).
    LossKind(name='affinity', default_sizes=(1,), max_sizes=1, learns_tables=False, terms='fixed'),
    LossKind(
      name='aaf', default_sizes=(1, 2, 3), max_sizes=None, learns_tables=True, terms='adaptive'
    ),
  )
}
LOSS_KINDS = tuple(KINDS)


def get(name: str) -> LossKind:
  if name not in KINDS:
    raise ValueError(f'config.loss.kind={name!r} is unknown; expected one of {LOSS_KINDS}.')
  return KINDS[name]
