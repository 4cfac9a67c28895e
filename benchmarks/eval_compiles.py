"""Each image at its own size: one masked-canvas step against a step compiled per image shape.

Draws image sizes like PASCAL VOC's (longest side `--long`, the other side anywhere from
`--short-min` to it, portrait or landscape), then evaluates them with the recipe's sliding
windows, scales and flip two ways, and prints compiles, compile seconds and run seconds:
  canvas:    `evaluate.jit_eval_step` on batches padded to one canvas, each image's size given
             (what evaluation does): compiles once;
  per-shape: the same inference jitted on each image cropped to its own shape (bucketing by
             shape): compiles once per distinct shape.
Both give the same predictions (tests/test_evaluate.py checks that); this measures the cost.

    python benchmarks/eval_compiles.py                     # small net, 1/8-scale VOC sizes, CPU
    python benchmarks/eval_compiles.py --preset=pspnet_resnet101 --long=500 --short-min=200 \
        --window=480 --stride=320 --images=32              # the paper's net and sizes, GPU
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import evaluate, models, sharding

SIX_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def voc_like_sizes(count: int, long_side: int, short_min: int, seed: int) -> list:
  rng = np.random.default_rng(seed)
  sizes = []
  for _ in range(count):
    short = int(rng.integers(short_min, long_side + 1))
    sizes.append((short, long_side) if rng.random() < 0.7 else (long_side, short))
  return sizes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='pspnet_tiny')
  parser.add_argument('--images', type=int, default=16)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--long', type=int, default=64)
  parser.add_argument('--short-min', type=int, default=24)
  parser.add_argument('--window', type=int, default=60)
  parser.add_argument('--stride', type=int, default=40)
  args = parser.parse_args()

  sizes = voc_like_sizes(args.images, args.long, args.short_min, seed=0)
  canvas = (args.long, args.long)
  model = models.build_model(models.get_preset(args.preset), num_classes=21)
  variables = jax.jit(model.init, static_argnames='train')(
    jax.random.key(0), jnp.zeros((1, args.window, args.window, 3)), train=False
  )
  options = dict(window=args.window, stride=args.stride, scales=SIX_SCALES, flip=True)
  rng = np.random.default_rng(1)
  images = [rng.normal(size=s + (3,)).astype(np.float32) for s in sizes]

  # canvas: batches padded to the canvas, as the eval iterator yields them
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = evaluate.jit_eval_step(model, 21, mesh, sharding.replicated(mesh), **options)
  batches = []
  for start in range(0, len(images), args.batch):
    chunk = images[start : start + args.batch]
    batch = {
      'image': np.zeros((args.batch,) + canvas + (3,), np.float32),
      'label': np.full((args.batch,) + canvas, 255, np.int32),
      'size': np.array([sizes[0]] * args.batch, np.int32),
      'valid': np.zeros(args.batch, bool),
    }
    for i, image in enumerate(chunk):
      h, w = image.shape[:2]
      batch['image'][i, :h, :w], batch['size'][i], batch['valid'][i] = image, (h, w), True
    batches.append(batch)
  with jax.set_mesh(mesh):
    first = sharding.global_batch(batches[0], mesh)
    start = time.perf_counter()
    compiled = step.step.lower(variables, first).compile()
    canvas_compile = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
      jax.block_until_ready(compiled(variables, sharding.global_batch(batch, mesh)))
    canvas_run = time.perf_counter() - start

  # per-shape: each image alone at its own shape, one compile per distinct shape
  alone = jax.jit(evaluate.make_eval_step(model, 21, **options))
  per_shape_compile, per_shape_run, compiled_by_shape = 0.0, 0.0, {}
  for image in images:
    one = {
      'image': image[None],
      'label': np.zeros((1,) + image.shape[:2], np.int32),
      'valid': np.ones(1, bool),
    }
    if image.shape not in compiled_by_shape:
      start = time.perf_counter()
      compiled_by_shape[image.shape] = alone.lower(variables, one).compile()
      per_shape_compile += time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled_by_shape[image.shape](variables, one))
    per_shape_run += time.perf_counter() - start

  print(
    f'{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), '
    f'{args.preset}, {len(images)} images, canvas {canvas}, window {args.window}, '
    f'stride {args.stride}, scales {SIX_SCALES}, flip'
  )
  print('| method | compiles | compile s | run s | total s |')
  print('|---|---|---|---|---|')
  print(
    f'| canvas, batch {args.batch} | 1 | {canvas_compile:.1f} | {canvas_run:.1f} | '
    f'{canvas_compile + canvas_run:.1f} |'
  )
  print(
    f'| per shape, batch 1 | {len(compiled_by_shape)} | {per_shape_compile:.1f} | '
    f'{per_shape_run:.1f} | {per_shape_compile + per_shape_run:.1f} |'
  )


if __name__ == '__main__':
  main()
