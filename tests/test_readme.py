"""The README's two set-up commands are the ones CI runs, and CONTRIBUTING.md's layout names
every module, so neither can rot."""

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


def test_layout_names_every_module():
  """CONTRIBUTING.md's layout table is the living picture of the tree: a new module goes in it."""
  text = open(os.path.join(ROOT, 'CONTRIBUTING.md')).read()
  layout = re.search(r'## Code layout\n(.+?)\n## ', text, re.S).group(1)
  package = os.path.join(ROOT, 'aaf_jax')
  modules = [
    os.path.relpath(os.path.join(folder, name), package)
    for folder, _, names in os.walk(package)
    for name in names
    if name.endswith('.py') and name != '__init__.py'
  ]
  missing = [m for m in sorted(modules) if os.path.basename(m) not in layout]
  assert not missing, f'CONTRIBUTING.md, Code layout, does not mention {missing}'
