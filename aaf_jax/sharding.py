"""The device mesh and the placement of host batches as global arrays (multi-host ready).

Data parallelism over every device: one mesh axis `data`; batches are split along it and
parameters are replicated. Under `jax.jit` over these global arrays, BatchNorm statistics and
loss means are already computed over the global batch, with no explicit collective.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices, with Auto axis types (sharding propagated by the compiler)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = 'batch_size') -> None:
  """The global batch must split evenly over devices and processes."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size <= 0 or global_batch_size % devices or global_batch_size % processes:
    raise ValueError(
      f'config.{name}={global_batch_size} must be a positive multiple of the device count '
      f'({devices}) and of the process count ({processes}).'
    )


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assemble every process's local piece into one global array per key, split on `data`."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
