"""Train-step figures for a GPU lease: ce against aaf, each dilated-conv form, MFU, memory, profile.

One process, planned for a short device lease (a ResNet-101 step took minutes to trace and
compile on an H200: the first lease of 2026-12-04 ran out before any step was measured):
- the state is filled on the host from `jax.eval_shape(init)` (random values: the step's time
  does not depend on them), so no init program is compiled;
- each (loss kind, conv form, loss implementation) variant is traced, compiled, timed and
  printed before the next one starts, its row giving the seconds tracing and compiling took,
  so whatever a time limit cuts off, every row before it is kept; variants run in the order given (put the
  important ones first);
- at the first crop every form in `--forms` runs; later crops run only the form measured faster;
- `--profile_dir` traces 3 steps of the fastest variant of the last kind at the first crop and
  prints kernel time by part of the step (network forward and backward, cross-entropy, affinity
  loss, optimizer; the parts are `jax.named_scope`s in aaf_jax/step.py) and the top kernels.

FLOPs come from the step's jaxpr (benchmarks/train_step.py's count_flops). Needs no TensorFlow.

    python benchmarks/step_suite.py --preset=pspnet_resnet101 --batch=8 --dtype=bfloat16 \
        --crops 336 720 --forms space_to_batch native --peak_tflops=615 --profile_dir=/tmp/prof
"""

import argparse
import collections
import glob
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from train_step import count_flops, random_batch  # benchmarks/ is on the path as a script

from aaf_jax import builder, step, validation
from configs import common

PARTS = ('network forward', 'network backward', 'cross-entropy', 'affinity loss', 'optimizer')


def host_state(init_fn, seed=0):
  """A TrainState of init_fn's structure, filled on the host: nothing is compiled."""
  shapes = jax.eval_shape(init_fn, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if 'var' in name or 'scale' in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def build(args, variant, crop):
  kind, form, implementation = variant
  config = common.base_config(kind, args.preset)
  config.num_train_steps = 1000
  config.batch_size = args.batch
  config.compute_dtype = args.dtype
  config.loss.implementation = implementation
  config.data.crop_size = crop
  if form:
    config.model.dilated_conv = form
  trainable = builder.build(config, args.classes)
  state = host_state(trainable.init)
  train_step = step.make_train_step(trainable.model, trainable.tx, config, args.classes)
  return state, train_step


def variants(kinds, forms, implementations):
  """(kind, conv form, loss implementation) triples; ce has no affinity term to implement."""
  return [
    (kind, form, impl)
    for kind in kinds
    for form in forms
    for impl in (implementations[:1] if kind == 'ce' else implementations)
  ]


def measure(args, variant, crop, batch):
  """Trace, compile and time one variant; None (reported) if it fails to lower or compile."""
  label = '/'.join(variant)
  stages, t0 = [], time.perf_counter()
  try:
    state, train_step = build(args, variant, crop)
    traced = jax.jit(train_step, donate_argnums=0).trace(state, batch)
    flops = count_flops(traced.jaxpr.jaxpr)
    lowered = traced.lower()
    stages.append(f'{time.perf_counter() - t0:.0f}')
    t0 = time.perf_counter()
    compiled = lowered.compile()
    stages.append(f'{time.perf_counter() - t0:.0f}')
  except Exception as error:  # reported, and the other variants go on
    done = f' (trace + lower {stages[0]} s)' if stages else ''
    print(f'| {label}: failed{done}: {_first_line(error)} |', flush=True)
    return None
  run = dict(state=state, compiled=compiled, flops=flops, times=[])
  for _ in range(2):  # two warm-up steps: the second may still settle placements
    run['state'], _, _ = compiled(run['state'], batch)
  jax.block_until_ready(run['state'])
  for _ in range(args.rounds):
    start = time.perf_counter()
    for _ in range(args.steps):
      run['state'], _, _ = compiled(run['state'], batch)
    jax.block_until_ready(run['state'])
    run['times'].append((time.perf_counter() - start) / args.steps)
  run['stages'] = ', '.join(stages)
  return run


def _first_line(error):
  text = f'{type(error).__name__}: {error}'.strip()
  return text.splitlines()[0][:300]


def memory_gib(compiled):
  """Arguments + outputs - aliased (donated) + temporaries of one program, in GiB."""
  m = compiled.memory_analysis()
  if m is None:
    return float('nan')
  total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return (total + m.temp_size_in_bytes) / 2**30


def print_header(args, crop):
  print(f'\n### crop {crop}, batch {args.batch}, {args.classes} classes, {args.dtype}')
  print(
    '| loss | dilated conv | loss impl. | step ms | images/s | GFLOPs/image | TFLOP/s | MFU | '
    'vs ce | program GiB | trace, compile s |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|', flush=True)


def print_row(args, variant, run, runs):
  """One row; 'vs ce' against the ce variant of the same form measured before it, if any."""
  kind, form, impl = variant
  t = statistics.median(run['times'])
  ce = [r['times'] for (k, f, _), r in runs.items() if k == 'ce' and f == form]
  base = statistics.median(ce[0]) if ce else float('nan')
  achieved = run['flops'] / t / 1e12
  mfu = f'{achieved / args.peak_tflops:.3f}' if args.peak_tflops else '-'
  print(
    f'| {kind} | {form or "(config default)"} | {"-" if kind == "ce" else impl} | '
    f'{1e3 * t:.2f} | {args.batch / t:.1f} | {run["flops"] / args.batch / 1e9:.1f} | '
    f'{achieved:.1f} | {mfu} | {t / base:.3f} | {memory_gib(run["compiled"]):.2f} | '
    f'{run["stages"]} |',
    flush=True,
  )


def faster_form(runs, forms):
  """The form whose slowest variant is fastest, among forms that ran."""

  def slowest(form):
    times = [statistics.median(r['times']) for (_, f, _), r in runs.items() if f == form]
    return max(times) if times else float('inf')

  return min(forms, key=slowest)


def op_names(hlo_text):
  """HLO instruction name -> an op_name for it, from a compiled module's text.

  An instruction's own metadata op_name where it has one; else (a fusion or call whose own
  metadata is empty) the first op_name inside the computation it calls; else (an op XLA made,
  such as a kernel gradient's convolution) its operands'.
  """
  header = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
  instruction = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = ')
  own, calls, operands = {}, {}, {}
  inside, computation = collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    match = instruction.match(line)
    if match is None:
      match = header.match(line)
      if match:
        computation = match.group(1)
      continue
    name = match.group(1)
    op_name = re.search(r'op_name="([^"]*)"', line)
    if op_name:
      own[name] = op_name.group(1)
      inside[computation].append(op_name.group(1))
    called = re.search(r'(?:calls|to_apply)=%?([\w.\-]+)', line)
    if called:
      calls[name] = called.group(1)
    operands[name] = re.findall(r'%([\w.\-]+)', line.split(' = ', 1)[1].split('),', 1)[0])
  names = dict(own)
  for name, callee in calls.items():
    if name not in names and inside[callee]:
      names[name] = inside[callee][0]
  for _ in range(3):  # operands of operands, a few levels deep
    for name, args in operands.items():
      known = [names[a] for a in args if a in names]
      if name not in names and known:
        # An op fed by a backward op is part of the backward (a kernel gradient reads the
        # forward activations too).
        names[name] = next((n for n in known if 'transpose(' in n), known[0])
  return names


def part_of(op_name):
  """Which part of the step an op belongs to, from the named scopes in aaf_jax/step.py."""
  if 'optimizer' in op_name:
    return 'optimizer'
  if 'affinity_loss' in op_name:
    return 'affinity loss'
  if 'cross_entropy' in op_name:
    return 'cross-entropy'
  if 'network' in op_name:
    return 'network backward' if 'transpose(' in op_name else 'network forward'
  return 'other'


def kernel_events(xspace_path, module_hint):
  """(kernel name, hlo_op, ns) of every device kernel of the step (host ops on a CPU backend)."""
  from jax.profiler import ProfileData  # jaxlib's reader; needs no TensorFlow

  data = ProfileData.from_file(xspace_path)
  device, host = [], []
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        hlo_op, module = stats.get('hlo_op'), str(stats.get('hlo_module', ''))
        if hlo_op is None or module_hint not in module:
          continue
        row = (event.name, str(hlo_op), float(event.duration_ns))
        (device if plane.name.startswith('/device:') else host).append(row)
  return device or host, 'device' if device else 'host'


def profile(run, batch, profile_dir, steps=3, top=12):
  for _ in range(2):
    run['state'], _, _ = run['compiled'](run['state'], batch)
  jax.block_until_ready(run['state'])
  with jax.profiler.trace(profile_dir):
    for _ in range(steps):
      run['state'], _, _ = run['compiled'](run['state'], batch)
    jax.block_until_ready(run['state'])
  paths = sorted(glob.glob(f'{profile_dir}/**/*.xplane.pb', recursive=True))
  if not paths:
    print(f'no profile was written under {profile_dir}', flush=True)
    return
  events, where = kernel_events(paths[-1], 'train_step')
  names = op_names(run['compiled'].as_text())
  by_part = collections.Counter()
  by_kernel = collections.defaultdict(lambda: [0.0, 0, ''])
  for kernel, hlo_op, ns in events:
    op_name = names.get(hlo_op, '')
    by_part[part_of(op_name)] += ns
    entry = by_kernel[kernel]
    entry[0] += ns
    entry[1] += 1
    entry[2] = entry[2] or f'{hlo_op}: {op_name}'
  total = sum(by_part.values())
  if not total:
    print(f'the profile holds no {where} kernel of the step', flush=True)
    return
  print(f'\n### profile: {steps} steps, {where} kernel time {total / steps / 1e6:.2f} ms per step')
  print('| part | ms per step | share |')
  print('|---|---|---|')
  for part in (*PARTS, 'other'):
    print(f'| {part} | {by_part[part] / steps / 1e6:.3f} | {by_part[part] / total:.1%} |')
  print('\n| top kernels | calls per step | ms per step | share | first HLO op: op_name |')
  print('|---|---|---|---|---|')
  for kernel, (ns, calls, where_from) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]:
    print(
      f'| `{kernel[:60]}` | {calls / steps:g} | {ns / steps / 1e6:.3f} | {ns / total:.1%} | '
      f'{where_from[:110]} |'
    )
  print(flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='pspnet_tiny')
  parser.add_argument('--crops', type=int, nargs='+', default=[64])
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--classes', type=int, default=21)
  parser.add_argument('--dtype', default='float32', choices=validation.COMPUTE_DTYPES)
  parser.add_argument('--kinds', nargs='+', default=['ce', 'aaf'])
  parser.add_argument(
    '--forms', nargs='+', default=[''], help="config.model.dilated_conv values ('' = default)"
  )
  parser.add_argument(
    '--implementations',
    nargs='+',
    default=['xla'],
    help='config.loss.implementation values for the affinity kinds',
  )
  parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--peak_tflops', type=float, default=0.0, help='for MFU (matmul_peak.py)')
  parser.add_argument('--profile_dir', default='', help='trace the step and print a summary')
  args = parser.parse_args()

  device = jax.devices()[0]
  print(
    f'# {args.preset}; device {device.device_kind} x{jax.device_count()} '
    f'({jax.default_backend()}), jax {jax.__version__}, {platform.node()}',
    flush=True,
  )
  forms = list(args.forms)
  for index, crop in enumerate(args.crops):
    batch = random_batch(args.batch, crop, args.classes)
    print_header(args, crop)
    runs = {}
    for variant in variants(args.kinds, forms, args.implementations):
      run = measure(args, variant, crop, batch)
      if run is not None:
        runs[variant] = run
        print_row(args, variant, run, runs)
    if index == 0 and runs:
      forms = [faster_form(runs, forms)]
      if len(args.forms) > 1:
        print(f'\nfaster dilated-conv form at crop {crop}: {forms[0]}', flush=True)
      last = [v for v in runs if v[0] == args.kinds[-1] and v[1] == forms[0]]
      if args.profile_dir and last:  # the fastest variant of the last kind, faster form
        fastest = min(last, key=lambda v: statistics.median(runs[v]['times']))
        print(f'\nprofiled: {"/".join(fastest)} at crop {crop}', flush=True)
        profile(runs[fastest], batch, args.profile_dir)
    runs.clear()
  stats = device.memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    print(f'\npeak device memory over the run: {stats["peak_bytes_in_use"] / 2**30:.2f} GiB')


if __name__ == '__main__':
  main()
