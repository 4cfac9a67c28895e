from aaf_jax import jsonio


def test_results_json_is_written_atomically(tmp_path):
  path = tmp_path / 'results.json'
  jsonio.write_json_atomically(str(path), {'miou': 0.5})
  assert path.read_text().strip().startswith('{')
  try:
    jsonio.write_json_atomically(str(path), {'miou': float('nan')})
  except ValueError:
    pass
  assert '0.5' in path.read_text()  # the old result is intact
  assert [p.name for p in tmp_path.iterdir()] == ['results.json']
