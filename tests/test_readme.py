"""The README's two set-up commands are the ones CI runs, so they cannot rot."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_command(marker):
  text = open(os.path.join(ROOT, 'README.md')).read()
  match = re.search(rf'<!-- {marker} -->\s*```\n(.+?)\n```', text, re.S)
  assert match, f'README.md has no command after <!-- {marker} -->'
  return match.group(1).strip()


def ci_lines():
  return [line.strip() for line in open(os.path.join(ROOT, '.ci', 'run'))]


def test_ci_runs_the_readme_test_command():
  command = readme_command('test-command')
  assert 'pytest' in command
  assert command in ci_lines()


def test_ci_runs_the_readme_main_command():
  command = readme_command('main-command')
  assert 'launch.py --config=configs/synthetic.py' in command
  assert command in ci_lines()


def test_readme_loss_example_runs():
  text = open(os.path.join(ROOT, 'README.md')).read()
  example = re.search(r'```python\n(.+?)\n```', text, re.S).group(1)
  namespace = {}
  exec(compile(example, 'README.md example', 'exec'), namespace)
  assert namespace['edges'].shape == (3,) and float(namespace['loss']) > 0


def test_layout_names_every_module():
  """The README's Layout section is the living picture of the tree: a new module goes in it."""
  text = open(os.path.join(ROOT, 'README.md')).read()
  layout = re.search(r'## Layout\n(.+?)\n## ', text, re.S).group(1)
  package = os.path.join(ROOT, 'aaf_jax')
  modules = [
    os.path.relpath(os.path.join(folder, name), package)
    for folder, _, names in os.walk(package)
    for name in names
    if name.endswith('.py') and name != '__init__.py'
  ]
  missing = [m for m in sorted(modules) if os.path.basename(m) not in layout]
  assert not missing, f'README Layout does not mention {missing}'
