"""train_and_evaluate(config, workdir): set up, restore or init, the loop, the final scores.

The network, optimizer and initial state are built by builder.py; the objective and the
update are in objective.py and step.py; the resume order and the init checkpoint in resume.py,
the donation-safe save in checkpoint.py; the run record (config.json, environment.json, the
config fingerprint) in run_record.py, the checkpoints' "same run?" check in same_run.py.
`evaluate_checkpoint` is `--mode=eval`.
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from aaf_jax import (
  builder,
  checkpoint,
  distributed,
  errors,
  evaluate,
  jsonio,
  logs,
  loss_kinds,
  models,
  resume,
  run_record,
  same_run,
  sharding,
  validation,
  viz,
)
from aaf_jax.data import pipeline
from aaf_jax.step import make_train_step


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both modes build from a config: mesh, dataset info, network, optimizer, state init."""

  mesh: jax.sharding.Mesh
  info: pipeline.DatasetInfo
  model: object
  tx: object
  init: object  # rng -> TrainState
  state_sharding: object


def setup(config) -> Setup:
  """Every check first (config, devices, network options), then data preparation and the rest."""
  validation.validate(config)
  pretrained = config.model.pretrained
  if pretrained and not os.path.exists(os.path.expanduser(pretrained)):
    raise errors.MissingFileError(
      f'config.model.pretrained={pretrained!r}: no such file. Import the ImageNet backbone '
      "with `python -m aaf_jax.weights` first, or set it to '' to train from scratch."
    )
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  per_device = config.batch_size // mesh.devices.size
  if per_device % config.grad_accum_steps:
    raise ValueError(
      f'config.grad_accum_steps={config.grad_accum_steps} must divide the per-device batch '
      f'({per_device}).'
    )
  models.check_input_size(config.model, config.data.crop_size, config.data.crop_size)
  info = distributed.first_on_process_0(
    lambda first: pipeline.dataset_info(config.data, prepare=first),
    f'Preparing dataset {config.data.name!r} if it is not yet in {config.data.data_dir}',
  )
  trainable = builder.build(config, info.num_classes)
  state_sharding = trainable.state_sharding(mesh)
  return Setup(mesh, info, trainable.model, trainable.tx, trainable.init, state_sharding)


class Evaluator:
  """The inference of `config.eval` on `config.data.eval_split`, jitted once for a run."""

  def __init__(self, config, run: Setup):
    self._config, self._run = config, run
    self._step = evaluate.jit_eval_step(
      run.model,
      run.info.num_classes,
      run.mesh,
      checkpoint.network_shardings(run.state_sharding),
      **config.eval.to_dict(),
    )

  def __call__(self, variables, num_keep: int = 0):
    """(scores dict, up to `num_keep` (image, label, prediction) examples) of `variables`."""
    config, run = self._config, self._run
    batches = pipeline.make_eval_iterator(
      config.data,
      split=config.data.eval_split,
      global_batch_size=config.eval_batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    with jax.set_mesh(run.mesh):
      sums, examples = evaluate.run_evaluation(
        self._step, variables, batches, run.mesh, run.info.num_classes, num_keep
      )
    results = evaluate.summarize(sums, run.info.class_names)
    results['boundary_width'] = config.eval.boundary_width
    return results, examples


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train per `config`, checkpointing into `workdir`, then evaluate; returns results.json."""
  run = setup(config)
  num_classes = run.info.num_classes
  rng = jax.random.key(config.seed)
  os.makedirs(workdir, exist_ok=True)
  distributed.check_shared_workdir(workdir)
  checkpointer = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  try:
    state, data_state = resume.restore_or_init(
      checkpointer, config, run.init, run.state_sharding, rng, num_classes
    )
    start = int(jax.device_get(state.step))
    if jax.process_index() == 0:
      run_record.write(workdir, config, start, jax.devices(), jax.process_count())
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
      make_train_step(run.model, run.tx, config, num_classes),
      in_shardings=(run.state_sharding, sharding.batch_sharding(run.mesh)),
      out_shardings=(
        run.state_sharding,
        sharding.replicated(run.mesh),
        sharding.replicated(run.mesh),
      ),
      donate_argnums=0,
    )
    evaluator = Evaluator(config, run)
    meta = same_run.checkpoint_meta(config, num_classes)
    writer = logs.create_writer(
      workdir, just_logging=jax.process_index() > 0, num_steps=config.num_train_steps
    )
    pace = logs.Pace()

    def run_eval(step):
      results, examples = evaluator(_variables(state), config.num_summary_images)
      _write_eval_summaries(writer, step, results, examples, config, num_classes)
      return results

    if start == 0:
      writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    train_metrics, pending = None, None
    with jax.set_mesh(run.mesh):
      for step in range(start + 1, config.num_train_steps + 1):
        batch = sharding.global_batch(next(train_iter), run.mesh)
        state, step_metrics, finite = train_step(state, batch)
        if pending is not None:  # the previous step's flag: it is ready, this step is queued
          _raise_if_not_finite(*pending)
        pending = (step, finite)
        train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
        if step == start + 1:  # steps/s leaves out the first step, which compiles
          jax.block_until_ready(step_metrics)
          pace.rate(step)
        last = step == config.num_train_steps
        if step % config.log_every_steps == 0 or last:
          scalars = {f'train/{k}': v for k, v in train_metrics.compute().items()}
          rate = pace.rate(step)  # after compute(): the logged steps have finished
          if rate is not None:
            scalars[logs.STEPS_PER_SEC] = rate
          writer.write_scalars(step, scalars)
          train_metrics = None
        if step % config.checkpoint_every_steps == 0 or last:
          _raise_if_not_finite(*pending)  # never write a broken state
          checkpointer.save(step, state, train_iter.get_state(), meta)
        if config.eval_every_steps and step % config.eval_every_steps == 0 and not last:
          run_eval(step)
      if pending is not None:
        _raise_if_not_finite(*pending)
    results = run_eval(config.num_train_steps)
  finally:
    # Also on an error (a NaN, say): finish writing the last good checkpoint, never half of it.
    checkpointer.close()

  results['step'] = config.num_train_steps
  results['fingerprint'] = run_record.fingerprint(config)
  if loss_kinds.get(config.loss.kind).learns_tables:
    results['field_size_weights'] = field_size_weights(
      state.params, run.info.class_names, config.loss.sizes
    )
  if jax.process_index() == 0:
    jsonio.write_json_atomically(os.path.join(workdir, 'results.json'), results)
    if 'field_size_weights' in results:
      viz.plot_field_sizes(os.path.join(workdir, 'field_sizes.png'), results['field_size_weights'])
  writer.flush()
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluate the latest checkpoint in `workdir` (`--mode=eval`); returns the scores.

  Writes them to `workdir/eval-DATASET-SPLIT.json`: results.json's fields plus the checkpoint's
  step, the config fingerprint and the inference settings used.
  """
  run = setup(config)
  rng = jax.random.key(config.seed)
  if os.path.isdir(workdir):
    distributed.check_shared_workdir(workdir)
  network, step = resume.restore_network(
    workdir, config, run.init, run.state_sharding, rng, run.info.num_classes
  )
  variables = {'params': network['params']['model'], 'batch_stats': network['batch_stats']}
  results, _ = Evaluator(config, run)(variables)
  results['step'] = step
  results['fingerprint'] = run_record.fingerprint(config)
  results['inference'] = {
    'dataset': config.data.name,
    'split': config.data.eval_split,
    'eval_size': list(config.data.eval_size),
    **{k: list(v) if isinstance(v, tuple) else v for k, v in config.eval.to_dict().items()},
  }
  logging.info(
    'Evaluation of step %d on %s:\n%s', step, config.data.eval_split, evaluate.format_table(results)
  )
  if jax.process_index() == 0:
    jsonio.write_json_atomically(eval_results_path(workdir, config), results)
  return results


def eval_results_path(workdir: str, config) -> str:
  """Where `--mode=eval` writes its scores: WORKDIR/eval-DATASET-SPLIT.json."""
  return os.path.join(workdir, run_record.eval_results_name(config))


def _variables(state) -> dict:
  """The network's variables of a TrainState."""
  return {'params': state.params['model'], 'batch_stats': state.batch_stats}


def field_size_weights(params, class_names, sizes) -> dict:
  """softmax over sizes of both AAF tables, per class name."""
  out = {'sizes': list(sizes)}
  for key, name in (('edge_logits', 'edge'), ('nonedge_logits', 'nonedge')):
    weights = np.asarray(jax.device_get(jax.nn.softmax(params['aaf'][key], axis=-1)))
    out[name] = {c: [float(w) for w in row] for c, row in zip(class_names, weights)}
  return out


def _write_eval_summaries(writer, step, results, examples, config, num_classes):
  writer.write_scalars(
    step,
    {
      'eval/miou': results['miou'],
      'eval/boundary_iou': results['boundary_iou'],
      'eval/pixel_acc': results['pixel_acc'],
    },
  )
  if examples:
    images = [
      viz.side_by_side(img, lab, pred, config.data.mean, num_classes) for img, lab, pred in examples
    ]
    writer.write_images(step, {'eval/input_truth_prediction': np.stack(images)})
  logging.info(
    'Evaluation at step %d on %s:\n%s', step, config.data.eval_split, evaluate.format_table(results)
  )


def _raise_if_not_finite(step, finite):
  if not bool(jax.device_get(finite)):
    raise FloatingPointError(
      f'Non-finite loss or gradient at step {step}; stopping without '
      'writing a checkpoint of that state.'
    )
