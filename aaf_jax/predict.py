"""`launch.py --mode=predict`: segment your own images with a trained checkpoint.

For each image NAME.EXT found by `--input` (a folder, or a glob such as 'photos/*.jpg') it
writes, under `--output`:
  NAME.png           the predicted classes as a palette PNG (pixel value = class index, shown
                     in the PASCAL VOC colours), at the image's own size;
  NAME_overlay.jpg   the image with the class colours blended in;
  labelIds/NAME.png  for Cityscapes models only: the prediction in Cityscapes labelIds, the
                     format the benchmark server takes (zip the labelIds folder to submit).
Inference is `config.eval` (windows, scales, flip) on each image at its own size, one image at
a time; in a multi-process job each process segments every N-th image on its own device. An image that cannot be read gets an error line naming it; the others are still
written, and the exit status says that something failed.
"""

import glob
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from aaf_jax import errors, evaluate, viz

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff', '.webp')
# Sliding-window inference masks each image inside a canvas rounded up to this many pixels,
# so images of nearby sizes share one compiled step (the result is the image's own).
CANVAS_STEP = 256
OVERLAY_OPACITY = 0.5


def list_images(input_path: str) -> list[str]:
  """The image files of a folder, or those a glob matches, sorted; an error if none."""
  expanded = os.path.expanduser(input_path)
  if os.path.isdir(expanded):
    names = [os.path.join(expanded, n) for n in os.listdir(expanded)]
    files = [p for p in names if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)]
  else:
    files = [p for p in glob.glob(expanded) if os.path.isfile(p)]
  if not files:
    raise errors.MissingFileError(
      f'--input={input_path!r}: no image files there; expected a folder of images '
      f"({', '.join(IMAGE_EXTENSIONS)}) or a glob such as 'photos/*.jpg'."
    )
  stems = {}
  for path in sorted(files):
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in stems:
      raise errors.UserError(
        f'--input={input_path!r}: {stems[stem]} and {path} would both be written as {stem}.png; '
        'rename one of them.'
      )
    stems[stem] = path
  return sorted(files)


def cityscapes_label_ids() -> np.ndarray:
  """[19] uint8: the Cityscapes labelId of each train id."""
  from cityscapesscripts.helpers import labels as cityscapes_labels

  table = np.zeros(19, np.uint8)
  for label in cityscapes_labels.labels:
    if 0 <= label.trainId < 19:
      table[label.trainId] = label.id
  return table


class Predictor:
  """`config.eval`'s inference of one image: uint8 [H,W,3] -> class indices [H,W] uint8.

  Sliding-window inference compiles once per canvas (the image size rounded up to
  CANVAS_STEP); whole-image inference once per image size (pyramid pooling spans the input).
  """

  def __init__(self, model, variables, num_classes: int, mean, eval_options: dict):
    evaluate.check_eval_options(**eval_options)
    self._variables = variables
    self._mean = np.asarray(mean, np.float32)
    self._window = eval_options['window']
    # Inference settings only: `boundary_width` belongs to the metric, not to inference.
    options = {k: v for k, v in eval_options.items() if k in ('window', 'stride', 'flip')}
    options['scales'] = tuple(float(s) for s in eval_options['scales'])

    def classes(variables, images, sizes):
      apply_fn = lambda x: model.apply(variables, x, train=False)['logits']
      probs = evaluate.predict_probs(
        apply_fn, images, num_classes, sizes=sizes if self._window else None, **options
      )
      return jnp.argmax(probs, axis=-1).astype(jnp.uint8)

    self._classes = jax.jit(classes)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    canvas = (height, width)
    if self._window:
      canvas = tuple(-(-n // CANVAS_STEP) * CANVAS_STEP for n in (height, width))
    padded = np.zeros((1,) + canvas + (3,), np.float32)
    padded[0, :height, :width] = image.astype(np.float32) - self._mean
    sizes = np.array([[height, width]], np.int32)
    classes = self._classes(self._variables, padded, sizes)
    return np.asarray(classes)[0, :height, :width]


def read_image(path: str) -> np.ndarray:
  """RGB uint8 [H,W,3]; OSError or ValueError when the file is no readable image."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def write_prediction(output_dir: str, stem: str, image, classes, label_ids=None) -> None:
  """NAME.png (palette), NAME_overlay.jpg and, given a train id -> labelId table,
  labelIds/NAME.png."""
  palette_png = Image.fromarray(classes, mode='P')
  palette_png.putpalette(viz.palette().ravel().tolist())
  palette_png.save(os.path.join(output_dir, f'{stem}.png'))
  colours = viz.colourise(classes, 256).astype(np.float32)
  overlay = (1 - OVERLAY_OPACITY) * image.astype(np.float32) + OVERLAY_OPACITY * colours
  Image.fromarray(np.round(overlay).astype(np.uint8)).save(
    os.path.join(output_dir, f'{stem}_overlay.jpg'), quality=90
  )
  if label_ids is not None:
    os.makedirs(os.path.join(output_dir, 'labelIds'), exist_ok=True)
    Image.fromarray(label_ids[classes]).save(os.path.join(output_dir, 'labelIds', f'{stem}.png'))


def predict_folder(predictor, input_path: str, output_dir: str, label_ids=None) -> list[str]:
  """Segment every image of `input_path` into `output_dir`; returns the files that failed."""
  from tqdm import tqdm

  files = list_images(input_path)
  output_dir = os.path.expanduser(output_dir)
  folders = {os.path.dirname(os.path.abspath(p)) for p in files}
  if os.path.abspath(output_dir) in folders:
    raise errors.UserError(
      f'--output={output_dir!r} holds input images: the predictions, named after them, would '
      'overwrite them; choose another folder.'
    )
  os.makedirs(output_dir, exist_ok=True)
  total = len(files)
  files = files[jax.process_index() :: jax.process_count()]  # this process's share
  failed = []
  for path in tqdm(files, desc='predict', unit='image', file=sys.stderr):
    try:
      image = read_image(path)
    except (OSError, ValueError) as e:
      failed.append(path)
      tqdm.write(f'ERROR: cannot read {path}: {e}', file=sys.stderr)
      continue
    stem = os.path.splitext(os.path.basename(path))[0]
    write_prediction(output_dir, stem, image, predictor(image), label_ids)
  logging.info(
    'Wrote the predictions of %d of %d images to %s (process %d of %d: %d of %d images)',
    len(files) - len(failed),
    len(files),
    output_dir,
    jax.process_index(),
    jax.process_count(),
    len(files),
    total,
  )
  return failed


def restore_network(config, workdir: str):
  """(model, variables, class names) of the latest checkpoint in `workdir`.

  Needs only the dataset's class list, not the prepared dataset: the images are the user's.
  """
  from aaf_jax import builder, resume, sharding
  from aaf_jax.data import builder_class

  workdir = os.path.expanduser(workdir)
  class_names = tuple(builder_class(config.data.name).CLASS_NAMES)
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise errors.MissingFileError(f'--mode=predict: no checkpoints/ folder in workdir {workdir}.')
  trainable = builder.build(config, len(class_names))
  state_sharding = trainable.state_sharding(sharding.make_mesh())
  network, _ = resume.restore_network(
    workdir, config, trainable.init, state_sharding, jax.random.key(config.seed), len(class_names)
  )
  variables = {'params': network['params']['model'], 'batch_stats': network['batch_stats']}
  # Each process segments its own images on its own device: the replicated network is copied
  # there, so inference involves no other process.
  device = jax.local_devices()[0]
  variables = jax.tree.map(lambda x: jax.device_put(x.addressable_data(0), device), variables)
  return trainable.model, variables, class_names


def run(config, workdir: str, input_path: str, output_dir: str) -> list[str]:
  """`--mode=predict`: the latest checkpoint of `workdir` on the images of `input_path`, into
  `output_dir`; returns the images that could not be read."""
  if not input_path or not output_dir:
    raise errors.UserError('--mode=predict needs --input=FOLDER_OR_GLOB and --output=DIR.')
  model, variables, class_names = restore_network(config, workdir)
  predictor = Predictor(model, variables, len(class_names), config.data.mean, config.eval.to_dict())
  label_ids = cityscapes_label_ids() if config.data.name == 'cityscapes' else None
  return predict_folder(predictor, input_path, output_dir, label_ids)
