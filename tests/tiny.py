"""A tiny synthetic config for end-to-end tests: 32 px images, a few steps, seconds to run."""

import ml_collections

from configs import synthetic


def tiny_config(data_dir, loss='aaf', **overrides) -> ml_collections.ConfigDict:
  config = synthetic.get_config(f'{loss},steps=4,batch=8,data_dir={data_dir}')
  config.unlock()
  config.data.synthetic.image_size = 32
  config.data.synthetic.num_train = 24
  config.data.synthetic.num_validation = 10
  config.data.crop_size = 32
  config.data.eval_size = (32, 32)
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.num_summary_images = 2
  config.model.base_width = 8
  config.model.stem_width = 8
  config.model.head_width = 8
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config
