"""The documents stay honest: their Python examples run as written, the README's training loop
ascends on the field-size tables, and every relative link and #anchor resolves as GitHub
renders it."""

import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DOCUMENTS = [
  README,
  os.path.join(ROOT, 'CONTRIBUTING.md'),
  os.path.join(ROOT, 'BENCHMARKS.md'),
  *sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md'))),
]
_FENCE = re.compile(r'^```.*?^```', re.S | re.M)


def _read(path):
  with open(path) as f:
    return f.read()


def python_blocks(path):
  return re.findall(r'^```python\n(.+?)\n```', _read(path), re.S | re.M)


def _ids(paths):
  return [os.path.relpath(p, ROOT) for p in paths]


EXAMPLES = [(path, i) for path in DOCUMENTS for i, _ in enumerate(python_blocks(path))]


def _run(path, index):
  namespace = {'__name__': 'documented_example'}
  code = python_blocks(path)[index]
  exec(compile(code, f'{os.path.relpath(path, ROOT)} example {index}', 'exec'), namespace)
  return namespace


@pytest.mark.parametrize(
  'path, index', EXAMPLES, ids=[f'{os.path.relpath(p, ROOT)}-{i}' for p, i in EXAMPLES]
)
def test_python_example_runs(path, index):
  namespace = _run(path, index)
  assert np.isfinite(float(namespace['loss'])), namespace['loss']


def test_readme_is_read_in_five_minutes():
  """An index, not a notebook (issue 30): at most 250 lines; the rest goes to docs/."""
  with open(README) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 250, f'README.md has {len(lines)} lines; move detail to docs/'


def test_the_readme_and_the_loss_page_have_examples():
  assert python_blocks(README) and python_blocks(os.path.join(ROOT, 'docs', 'loss.md'))


def test_readme_training_loop_ascends_on_the_tables_and_descends_on_the_network():
  """One update of the README's optimizer moves the tables with the gradient, the network
  against it (the paper's min-max), and the loop moved the tables off their zero start."""
  (index,) = [i for i, code in enumerate(python_blocks(README)) if 'optax.partition' in code]
  ns = _run(README, index)
  params, objective, tx = ns['params'], ns['objective'], ns['tx']
  assert float(jnp.abs(params['aaf']['edge']).max()) > 0, 'the loop did not train the tables'
  grads = jax.grad(objective)(params, 0)
  updates, _ = tx.update(grads, tx.init(params), params)
  for group, sign in (('aaf', 1.0), ('net', -1.0)):
    for update, grad in zip(jax.tree.leaves(updates[group]), jax.tree.leaves(grads[group])):
      moving = np.abs(np.asarray(grad)) > 1e-8
      assert moving.any(), group
      np.testing.assert_array_equal(
        np.sign(np.asarray(update))[moving], sign * np.sign(np.asarray(grad))[moving], group
      )


def github_anchor(heading: str) -> str:
  """The id GitHub gives a heading: links reduced to their text, lower case, punctuation
  dropped (word characters, hyphens and spaces stay), spaces turned into hyphens."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip())
  text = re.sub(r'[^\w\- ]', '', text.lower())
  return text.replace(' ', '-')


def anchors(path) -> set[str]:
  """Every #fragment a link may use in `path`: headings (repeats get -1, -2, ...) and explicit
  <a id/name> tags."""
  text = _FENCE.sub('', _read(path))
  found, seen = set(), {}
  for heading in re.findall(r'^#{1,6} +(.+?) *#*$', text, re.M):
    slug = github_anchor(heading)
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    found.add(slug if count == 0 else f'{slug}-{count}')
  found.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', text))
  return found


def links(path) -> list[str]:
  """The targets of every Markdown link and image outside code."""
  text = re.sub(r'`[^`\n]*`', '', _FENCE.sub('', _read(path)))
  return re.findall(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text)


def test_anchor_rules_match_github():
  assert github_anchor('The loss in your own training loop') == 'the-loss-in-your-own-training-loop'
  assert github_anchor('ce vs affinity vs aaf, 9000 steps (2026-12-05)') == (
    'ce-vs-affinity-vs-aaf-9000-steps-2026-12-05'
  )
  assert github_anchor('`config.loss.tables`: how [tables](x.md) learn') == (
    'configlosstables-how-tables-learn'
  )


@pytest.mark.parametrize('path', DOCUMENTS, ids=_ids(DOCUMENTS))
def test_relative_links_and_anchors_resolve(path):
  assert os.path.exists(path), path
  broken = []
  for link in links(path):
    if re.match(r'[a-z]+:', link):  # http(s), mailto: not checked (no network)
      continue
    target, _, fragment = link.partition('#')
    target_path = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
    if not target_path.startswith(ROOT + os.sep) or not os.path.exists(target_path):
      broken.append(f'{link}: no file {os.path.relpath(target_path, ROOT)}')
    elif fragment and target_path.endswith('.md') and fragment not in anchors(target_path):
      broken.append(f'{link}: no heading #{fragment} in {os.path.relpath(target_path, ROOT)}')
  assert not broken, f'{os.path.relpath(path, ROOT)}: ' + '; '.join(broken)
