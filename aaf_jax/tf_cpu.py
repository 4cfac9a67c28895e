"""TensorFlow for the input pipeline and checkpoint reading only, never on an accelerator.

Every module of ours that uses TensorFlow imports `tf` from here, so the first import anywhere
hides the GPUs from TensorFlow before its runtime starts, once, and JAX keeps all device memory.
"""

import tensorflow as tf

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  pass  # TF's runtime was started by someone else first; its devices can no longer change

__all__ = ['tf']
