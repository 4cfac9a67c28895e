"""Entry point: parse flags, then train, evaluate or apply the latest checkpoint, or sweep.

python launch.py --config=configs/synthetic.py --workdir=/tmp/aaf
python launch.py --config=configs/synthetic.py --workdir=/tmp/aaf --mode=eval
python launch.py --config=configs/synthetic.py --workdir=/tmp/aaf --mode=predict \
    --input=photos/ --output=/tmp/aaf/predictions
python launch.py --config=configs/synthetic.py --workdir=/tmp/sweep --mode=sweep \
    --sweep='loss.margin=[1.0,2.0,3.0]' --seeds=3

Several processes (one per host or per GPU) form one job with --coordinator_address,
--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS), or with --distributed inside a
Cloud TPU pod, SLURM or Open MPI job; see docs/scaling.md. In such a job --mode=sweep
trains the grid's runs one after another, each over every process.

A mistake in the flags, the config or the files it names (`aaf_jax.errors.UserError`) ends the
run with one line on stderr and exit status 2; `--verbose` or AAF_VERBOSE=1 adds the traceback.
"""

import logging as pylogging
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from aaf_jax import errors, sweep, validation

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow serves only the input pipeline

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file, e.g. configs/synthetic.py:aaf', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, results.')
_MODE = flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'eval', 'sweep', 'predict'],
  'train: train then evaluate; eval: evaluate the latest checkpoint into '
  'WORKDIR/eval-DATASET-SPLIT.json; sweep: train every run of a grid (see aaf_jax/sweep/); '
  'predict: segment the images of --input with the latest checkpoint into --output.',
)
_INPUT = flags.DEFINE_string('input', None, '--mode=predict: a folder of images or a glob.')
_OUTPUT = flags.DEFINE_string('output', None, '--mode=predict: the folder for the predictions.')
_SWEEP = flags.DEFINE_multi_string(
  'sweep',
  [],
  "--mode=sweep: FIELD=LIST, e.g. 'loss.margin=[1.0,2.0]'; repeat for a grid. Default: the "
  "config file's get_sweep(arg).",
)
_SEEDS = flags.DEFINE_integer('seeds', 1, '--mode=sweep: seeds per grid point.')
_EVAL_SETS = flags.DEFINE_multi_string(
  'eval_sets',
  [],
  "--mode=sweep: evaluation sets of the config file's get_eval_sets(arg) to evaluate every run "
  'on, e.g. shifted (repeat or separate by commas); the summary gets a table per set.',
)
_SHARD = flags.DEFINE_string('shard', '0/1', '--mode=sweep: I/N runs runs I, I+N, I+2N, ...')
_SUMMARIZE = flags.DEFINE_bool(
  'summarize', False, '--mode=sweep: only write the summary of the runs so far.'
)
_BASELINE = flags.DEFINE_string(
  'baseline',
  None,
  '--mode=sweep: the grid point to compare against, FIELD=VALUE[,FIELD=VALUE], e.g. '
  "'loss.kind=ce'; the summary adds each other point's paired difference over seeds (95% CI).",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0, where the job coordinator listens (multi-process runs; default: '
  'JAX_COORDINATOR_ADDRESS, or the cluster with --distributed).',
)
_COORDINATOR_BIND_ADDRESS = flags.DEFINE_string(
  'coordinator_bind_address',
  None,
  'Address process 0 binds the coordinator to, e.g. 127.0.0.1:PORT to keep it on loopback '
  '(default: JAX_COORDINATOR_BIND_ADDRESS, else every interface on the coordinator port).',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Processes in the job (multi-process runs).', lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'This process: 0 .. num_processes - 1 (multi-process runs).', lower_bound=0
)
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Join a multi-process job whose settings JAX detects: Cloud TPU pod, SLURM or Open MPI.',
)
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
  'initialization_timeout', 300, 'Seconds to wait for every process to join the job.'
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
  'heartbeat_timeout',
  60,
  'Seconds without a heartbeat after which a process counts as dead and every process stops.',
)
flags.DEFINE_bool('verbose', False, 'Print the traceback of a user error (also AAF_VERBOSE=1).')
flags.mark_flags_as_required(['config', 'workdir'])

USER_ERROR_STATUS = 2


class _QuietLibraries(pylogging.Filter):
  """Drops the INFO chatter of Orbax and TFDS; their warnings and errors still show."""

  def filter(self, record):
    return record.levelno > pylogging.INFO or not any(
      f'{os.sep}{lib}{os.sep}' in record.pathname for lib in ('orbax', 'tensorflow_datasets')
    )


def _chain(error: BaseException) -> list[BaseException]:
  """`error` and the exceptions it was raised from or while handling, outermost first."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _flag_error_message(error: BaseException, argv: list[str]) -> str:
  """One line for an error in the flags: the flag at fault and what is wrong with it."""
  chain = _chain(error)
  root = chain[-1]
  if isinstance(root, (KeyError, AttributeError)) and root.args:
    # An override naming a field the config lacks (ml_collections hides a hint in a KeyError).
    field = str(root.args[0])
    hint = re.search(r'Did you mean "([^"]+)"', ' '.join(str(e.args[0]) for e in chain if e.args))
    flag = next(
      (a.split('=')[0] for a in argv if a.startswith('--config.') and field in a.split('=')[0]),
      '--config override',
    )
    suggestion = f'; did you mean {hint.group(1)!r}?' if hint else '.'
    return f'{flag}: the config has no field {field!r}{suggestion}'
  if 'Error whilst parsing config file' in str(error):  # get_config(arg) rejected its argument
    flag = str(error).split(': Error whilst', 1)[0]
    return f'{flag}: {root}'
  if isinstance(root, OSError) and 'Failed loading config file' in str(root):
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f'--config={flags.FLAGS["config"].config_filename}: cannot load it: {lines[-1]}'
  return str(error)


def _leave(status: int) -> None:
  """Flushes the logs and ends the process at once, skipping the interpreter's teardown.

  After an error, a tf.data pipeline may still have threads inside its Python read function;
  the final garbage collection then destroys the pipeline while holding the GIL those threads
  wait for, and the process never exits (seen with a damaged record file). Checkpoints are
  already complete here: training finishes its pending save before an error leaves it.
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def _exit_on_user_error(message: str, argv: list[str]) -> None:
  """Prints `message` as one line (after the traceback if asked) and exits with status 2."""
  if errors.verbose_requested(argv):
    traceback.print_exc()
  sys.stdout.flush()
  print(f'error: {errors.one_line(message)}', file=sys.stderr, flush=True)
  _leave(USER_ERROR_STATUS)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake in the flags reported as one line."""
  try:
    remaining = flags.FLAGS(argv)
    flags.FLAGS['config'].value.get('seed')  # a config file that failed to load raises here
  except Exception as e:  # anything the flags or a config file raise is the command line's fault
    _exit_on_user_error(_flag_error_message(e, argv), argv)
  if len(remaining) > 1:
    _exit_on_user_error(f'unexpected arguments {remaining[1:]}: every option is a --flag', argv)
  return remaining


def _run_sweep(config, workdir) -> None:
  """--mode=sweep: every argument checked (each run's config validated), then the runs.

  With the multi-process flags the job starts after the checks, and every process trains each
  run together (aaf_jax.distributed.Lockstep); process 0 writes the records and the summary.
  """
  shard = sweep.parse_shard(_SHARD.value)
  arguments = _SWEEP.value
  spec = config_flags.get_config_filename(flags.FLAGS['config'])
  if not arguments:
    arguments = sweep.default_sweep(spec)
    if arguments is None:
      raise errors.UserError(
        f'--mode=sweep needs --sweep=FIELD=LIST, or a config file that names its default sweep '
        f'with get_sweep(arg); {spec!r} has none.'
      )
  eval_sets = sweep.eval_sets(spec, _EVAL_SETS.value)
  runs = sweep.plan(config, workdir, arguments, _SEEDS.value, eval_sets)
  baseline = None if _BASELINE.value is None else sweep.baseline_group(runs, _BASELINE.value)
  job = None
  if _job_requested():
    from aaf_jax import distributed

    _initialize_job(distributed)
    job = distributed.Lockstep()
  if _SUMMARIZE.value:
    if job is None or job.writes:
      sweep.write_summary(runs, workdir, baseline)
  elif job is None:
    sweep.run_sweep(runs, workdir, shard, baseline=baseline)
  else:
    with distributed.stop_all_on_failure():
      sweep.run_sweep(runs, workdir, shard, baseline=baseline, job=job)


def _initialize_job(distributed) -> None:
  distributed.initialize(
    coordinator_address=_COORDINATOR_ADDRESS.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
    coordinator_bind_address=_COORDINATOR_BIND_ADDRESS.value,
    auto_detect=_DISTRIBUTED.value,
    initialization_timeout=_INITIALIZATION_TIMEOUT.value,
    heartbeat_timeout=_HEARTBEAT_TIMEOUT.value,
  )


def _job_requested() -> bool:
  """Whether the flags or JAX's environment ask for a multi-process job."""
  flags_given = (_COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID, _COORDINATOR_BIND_ADDRESS)
  return (
    _DISTRIBUTED.value
    or any(f.value is not None for f in flags_given)
    or bool(os.environ.get('JAX_COORDINATOR_ADDRESS'))
  )


def main(argv):
  del argv  # checked by _parse_flags
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    validation.validate(_CONFIG.value)  # before anything is imported or built
    if _MODE.value == 'sweep':
      _run_sweep(_CONFIG.value, _WORKDIR.value)
      _shutdown()
      return
    logging.info('Config:\n%s', _CONFIG.value)  # after the checks: a mistake is one line
    from aaf_jax import distributed  # after flag parsing: --help stays fast

    _initialize_job(distributed)
    with distributed.stop_all_on_failure():
      from aaf_jax import train

      if _MODE.value == 'train':
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
      elif _MODE.value == 'eval':
        train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
      else:
        from aaf_jax import predict

        failed = predict.run(_CONFIG.value, _WORKDIR.value, _INPUT.value, _OUTPUT.value)
        distributed.barrier('predict_done', timeout_s=distributed.FIRST_ON_PROCESS_0_TIMEOUT_S)
        if failed:  # the unreadable images were named above; the others are written
          distributed.shutdown()
          _leave(1)
  except errors.UserError as e:
    _exit_on_user_error(str(e), sys.argv)
  except Exception:  # a bug: its traceback, then the same prompt exit
    traceback.print_exc()
    _leave(1)
  _shutdown()


def _shutdown() -> None:
  """Leaves a multi-process job, if one was started (a one-process sweep never imports jax)."""
  if 'aaf_jax.distributed' in sys.modules:
    sys.modules['aaf_jax.distributed'].shutdown()


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
