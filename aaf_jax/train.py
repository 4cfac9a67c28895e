"""train_and_evaluate(config, workdir): init, the jitted step, the loop, checkpoints, metrics.

The objective and the update are in step.py.

Resume order: the workdir's latest checkpoint (with the data position, so the run continues
exactly as if never stopped), else `config.init_checkpoint` (network weights only; the AAF
tables, step, optimizer state and loss decay start afresh, as stage 2 of the VOC recipe does),
else the ImageNet backbone named by `config.model.pretrained`, else from scratch.
"""

import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions

from aaf_jax import errors, evaluate, models, optim, sharding, viz
from aaf_jax.data import pipeline
from aaf_jax.step import COMPUTE_DTYPES, init_state_fn, make_train_step, validate_config


def checkpoint_signature(config, num_classes: int) -> dict:
  """What a checkpoint must agree on to be resumed with this config."""
  model = {
    k: list(v) if isinstance(v, tuple) else v
    for k, v in config.model.to_dict().items()
    if k not in models.TRAINER_FIELDS
  }
  return {
    'model': model,
    'num_classes': num_classes,
    'loss_kind': config.loss.kind,
    'loss_sizes': list(config.loss.sizes),
    'dataset': config.data.name,
  }


def check_signature(saved: dict, expected: dict, where: str, ignore=()) -> None:
  """ValueError listing every field where a checkpoint's signature and the config differ."""
  differences = []
  for key in sorted((set(saved) | set(expected)) - set(ignore)):
    if key == 'model':
      for field in sorted(set(saved.get('model', {})) | set(expected['model'])):
        a, b = saved.get('model', {}).get(field), expected['model'].get(field)
        if a != b:
          differences.append(f'config.model.{field}: checkpoint {a!r}, config {b!r}')
    elif saved.get(key) != expected.get(key):
      differences.append(f'{key}: checkpoint {saved.get(key)!r}, config {expected.get(key)!r}')
  if differences:
    raise ValueError(
      f'{where} holds a checkpoint of a different model or config; use another '
      'workdir or the matching config. Differences: ' + '; '.join(differences)
    )


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options
  )


def _abstract_with_shardings(abstract, shardings):
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def restore_or_init(config, manager, init, state_sharding, signature, rng, ignore=()):
  """(state, data iterator state or None) following the resume order of the module docstring.

  `ignore`: signature fields allowed to differ (evaluation on another dataset).
  """
  abstract = _abstract_with_shardings(jax.eval_shape(init, rng), state_sharding)
  step = manager.latest_step()
  if step is not None:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    check_signature(meta, signature, f'workdir {manager.directory}', ignore)
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
      ),
    )
    logging.info('Resumed from %s at step %d.', manager.directory, step)
    return restored['state'], restored['data']
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  if config.init_checkpoint:
    state = _from_init_checkpoint(config.init_checkpoint, state, state_sharding, signature)
  elif config.model.get('pretrained'):
    from aaf_jax import weights  # only runs that import weights need its dependencies

    variables = weights.load_backbone(
      os.path.expanduser(config.model.pretrained),
      {'params': state.params['model'], 'batch_stats': state.batch_stats},
      layout=config.model.layout,
    )
    state = jax.device_put(
      state.replace(
        params={**state.params, 'model': variables['params']}, batch_stats=variables['batch_stats']
      ),
      state_sharding,
    )
  return state, None


def _from_init_checkpoint(path, state, state_sharding, signature):
  """Network weights and BN statistics from another run; everything else stays fresh."""
  directory = (
    os.path.join(path, 'checkpoints') if os.path.isdir(os.path.join(path, 'checkpoints')) else path
  )
  if not os.path.isdir(directory):
    raise errors.MissingFileError(
      f'config.init_checkpoint={path!r}: no checkpoint directory there.'
    )
  with ocp.CheckpointManager(directory) as source:
    step = source.latest_step()
    if step is None:
      raise errors.MissingFileError(
        f'config.init_checkpoint={path!r}: no checkpoint in {directory}.'
      )
    meta = source.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    ignore = ('loss_kind', 'loss_sizes')  # a CE run may initialise an AAF run
    check_signature(
      {k: v for k, v in meta.items() if k not in ignore},
      {k: v for k, v in signature.items() if k not in ignore},
      f'config.init_checkpoint={path!r}',
    )
    target = {'params': {'model': state.params['model']}, 'batch_stats': state.batch_stats}
    restored = source.restore(
      step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(item=target, partial_restore=True))
    )['state']
  logging.info('Initialised the network from %s (step %d).', directory, step)
  return jax.device_put(
    state.replace(
      params={**state.params, 'model': restored['params']['model']},
      batch_stats=restored['batch_stats'],
    ),
    state_sharding,
  )


def field_size_weights(params, class_names, sizes) -> dict:
  """softmax over sizes of both AAF tables, per class name."""
  out = {'sizes': list(sizes)}
  for key, name in (('edge_logits', 'edge'), ('nonedge_logits', 'nonedge')):
    weights = np.asarray(jax.device_get(jax.nn.softmax(params['aaf'][key], axis=-1)))
    out[name] = {c: [float(w) for w in row] for c, row in zip(class_names, weights)}
  return out


def _setup(config):
  """Checks, then the mesh, dataset info, model, optimizer, state init and its shardings."""
  validate_config(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  models.check_input_size(config.model, config.data.crop_size, config.data.crop_size)
  evaluate.check_eval_options(**config.eval.to_dict())
  if config.eval.window:
    models.check_input_size(config.model, config.eval.window, config.eval.window)
  info = pipeline.dataset_info(config.data)
  model = models.build_model(
    config.model, num_classes=info.num_classes, dtype=COMPUTE_DTYPES[config.compute_dtype]
  )
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  init = init_state_fn(model, tx, config, info.num_classes, config.data.crop_size)
  state_sharding = jax.tree.map(
    lambda _: sharding.replicated(mesh), jax.eval_shape(init, jax.random.key(config.seed))
  )
  return mesh, info, model, tx, init, state_sharding


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train per `config`, checkpointing into `workdir`, then evaluate; returns results.json."""
  pretrained = config.model.get('pretrained')
  if pretrained and not os.path.exists(os.path.expanduser(pretrained)):
    raise errors.MissingFileError(
      f'config.model.pretrained={pretrained!r}: no such file. Import the '
      'ImageNet backbone with `python -m aaf_jax.weights` first, or set '
      "it to '' to train from scratch."
    )
  mesh, info, model, tx, init, state_sharding = _setup(config)
  num_classes = info.num_classes
  if (config.batch_size // mesh.devices.size) % config.grad_accum_steps:
    raise ValueError(
      f'config.grad_accum_steps={config.grad_accum_steps} must divide the '
      f'per-device batch ({config.batch_size // mesh.devices.size}).'
    )
  rng = jax.random.key(config.seed)
  signature = checkpoint_signature(config, num_classes)

  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint_manager(workdir, config.keep_checkpoints)
  state, data_state = restore_or_init(config, manager, init, state_sharding, signature, rng)
  train_iter = pipeline.make_train_iterator(
    config.data,
    global_batch_size=config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  if data_state is not None:
    train_iter.set_state(data_state)

  train_step = jax.jit(
    make_train_step(model, tx, config, num_classes),
    in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh), sharding.replicated(mesh)),
    donate_argnums=0,
  )
  eval_step = evaluate.jit_eval_step(
    model,
    num_classes,
    mesh,
    {'params': state_sharding.params['model'], 'batch_stats': state_sharding.batch_stats},
    window=config.eval.window,
    stride=config.eval.stride,
    scales=config.eval.scales,
    flip=config.eval.flip,
  )

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)

  snapshot = []  # the state being written, kept alive until its async save has finished

  def save(step):
    # Save a copy: the next step donates `state`, and on CPU an async save may still be reading
    # the very buffers the donation hands back to XLA. The copy must outlive the save too.
    manager.wait_until_finished()
    snapshot[:] = [jax.tree.map(lambda x: x.copy(), state)]
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(snapshot[0]),
        data=ocp.args.JsonSave(train_iter.get_state()),
        meta=ocp.args.JsonSave(signature),
      ),
    )

  def run_eval(step):
    variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
    batches = pipeline.make_eval_iterator(
      config.data,
      split=config.data.eval_split,
      global_batch_size=config.eval_batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    confusion, examples = evaluate.run_evaluation(
      eval_step, variables, batches, mesh, num_classes, config.num_summary_images
    )
    results = evaluate.scores(confusion, info.class_names)
    writer.write_scalars(
      step, {'eval/miou': results['miou'], 'eval/pixel_acc': results['pixel_acc']}
    )
    if examples:
      writer.write_images(
        step,
        {
          'eval/input_truth_prediction': np.stack(
            [
              viz.side_by_side(img, lab, pred, config.data.mean, num_classes)
              for img, lab, pred in examples
            ]
          )
        },
      )
    logging.info(
      'Evaluation at step %d on %s:\n%s',
      step,
      config.data.eval_split,
      evaluate.format_table(results),
    )
    return results

  start = int(jax.device_get(state.step))
  if start == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
  train_metrics, pending = None, None
  try:
    with jax.set_mesh(mesh):
      for step in range(start + 1, config.num_train_steps + 1):
        batch = sharding.global_batch(next(train_iter), mesh)
        state, step_metrics, finite = train_step(state, batch)
        if pending is not None:  # the previous step's flag: it is ready, this step is queued
          _raise_if_not_finite(*pending)
        pending = (step, finite)
        train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
        progress(step)
        if step % config.log_every_steps == 0 or step == config.num_train_steps:
          writer.write_scalars(step, {f'train/{k}': v for k, v in train_metrics.compute().items()})
          train_metrics = None
        if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
          _raise_if_not_finite(*pending)  # never write a broken state
          save(step)
        if (
          config.eval_every_steps
          and step % config.eval_every_steps == 0
          and step != config.num_train_steps
        ):
          run_eval(step)
      if pending is not None:
        _raise_if_not_finite(*pending)
      results = run_eval(config.num_train_steps)
  finally:
    # Also on an error (a NaN, say): finish writing the last good checkpoint, never half of it.
    manager.wait_until_finished()
    manager.close()

  results['step'] = config.num_train_steps
  if config.loss.kind == 'aaf':
    results['field_size_weights'] = field_size_weights(
      state.params, info.class_names, config.loss.sizes
    )
  if jax.process_index() == 0:
    evaluate.write_json_atomically(os.path.join(workdir, 'results.json'), results)
    if config.loss.kind == 'aaf':
      weights = results['field_size_weights']
      viz.plot_field_sizes(
        os.path.join(workdir, 'field_sizes.png'),
        info.class_names,
        config.loss.sizes,
        [weights['edge'][c] for c in info.class_names],
        [weights['nonedge'][c] for c in info.class_names],
      )
  writer.flush()
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluate the latest checkpoint in `workdir` (launch.py --mode=eval); returns the scores."""
  mesh, info, model, tx, init, state_sharding = _setup(config)
  rng = jax.random.key(config.seed)
  with checkpoint_manager(workdir, config.keep_checkpoints) as manager:
    if manager.latest_step() is None:
      raise errors.MissingFileError(f'--mode=eval: no checkpoint in {manager.directory}.')
    # Another dataset with the same classes is fine: that is how GTA5 tests a Cityscapes model.
    state, _ = restore_or_init(
      config,
      manager,
      init,
      state_sharding,
      checkpoint_signature(config, info.num_classes),
      rng,
      ignore=('dataset',),
    )
  eval_step = evaluate.jit_eval_step(
    model,
    info.num_classes,
    mesh,
    {'params': state_sharding.params['model'], 'batch_stats': state_sharding.batch_stats},
    window=config.eval.window,
    stride=config.eval.stride,
    scales=config.eval.scales,
    flip=config.eval.flip,
  )
  batches = pipeline.make_eval_iterator(
    config.data,
    split=config.data.eval_split,
    global_batch_size=config.eval_batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  with jax.set_mesh(mesh):
    confusion, _ = evaluate.run_evaluation(
      eval_step,
      {'params': state.params['model'], 'batch_stats': state.batch_stats},
      batches,
      mesh,
      info.num_classes,
    )
  results = evaluate.scores(confusion, info.class_names)
  results['step'] = int(jax.device_get(state.step))
  logging.info(
    'Evaluation of step %d on %s:\n%s',
    results['step'],
    config.data.eval_split,
    evaluate.format_table(results),
  )
  return results


def _raise_if_not_finite(step, finite):
  if not bool(jax.device_get(finite)):
    raise FloatingPointError(
      f'Non-finite loss or gradient at step {step}; stopping without '
      'writing a checkpoint of that state.'
    )
