"""The affinity losses against the float64 reference written from the spec, plus properties."""

import contextlib
import functools
import importlib
from unittest import mock

import affinity_reference as ref
import hypothesis
import hypothesis.strategies as st
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from aaf_jax import affinity, affinity_pallas

# Every value and gradient test runs on both implementations of the pair sums: the XLA form and
# the fused Pallas kernels (in Pallas's interpreter on the CPU). Interpreted kernels compile
# slowly (seconds per shape), so the Pallas cases reuse a few shapes.


def random_case(seed, n=2, h=7, w=9, c=4, ignore_frac=0.15, peaked=1.0):
  """Softmax probabilities and labels with blobs, an ignore region and scattered 255s."""
  rng = np.random.default_rng(seed)
  probs = np.asarray(jax.nn.softmax(peaked * rng.normal(size=(n, h, w, c)) * 2.0, axis=-1))
  labels = rng.integers(0, c, size=(n, h, w))
  labels[:, : h // 2, : w // 2] = rng.integers(0, c)  # a blob so non-edges dominate there
  labels[rng.random(size=(n, h, w)) < ignore_frac] = 255
  return probs.astype(np.float32), labels.astype(np.int32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-7):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
@pytest.mark.parametrize('size', [1, 2, 3])
@pytest.mark.parametrize('seed', [0, 1])
def test_affinity_matches_reference(size, seed, implementation):
  probs, labels = random_case(seed)
  edge, nonedge = affinity.affinity_loss(
    probs, labels, num_classes=4, size=size, implementation=implementation
  )
  ref_edge, ref_nonedge = ref.affinity_loss(probs, labels, 4, size)
  assert ref_edge > 0 and ref_nonedge > 0  # the case exercises both terms
  assert edge.dtype == jnp.float32 and edge.shape == ()
  assert_close(edge, ref_edge)
  assert_close(nonedge, ref_nonedge)


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
@pytest.mark.parametrize('margin', [0.5, 3.0, 10.0])
def test_margin(margin, implementation):
  probs, labels = random_case(3, c=3)
  got = affinity.affinity_loss(
    probs, labels, num_classes=3, size=1, margin=margin, implementation=implementation
  )
  assert_close(got, ref.affinity_loss(probs, labels, 3, 1, margin))


@pytest.mark.parametrize(
  'shape,size', [((1, 2, 3), 2), ((1, 3, 7), 2), ((2, 4, 1), 1), ((1, 1, 1), 1), ((1, 6, 6), 3)]
)
@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_images_smaller_than_the_field(shape, size, implementation):
  probs, labels = random_case(4, *shape, c=3, ignore_frac=0.0)
  got = affinity.affinity_loss(
    probs, labels, num_classes=3, size=size, implementation=implementation
  )
  assert np.all(np.isfinite(got))
  assert_close(got, ref.affinity_loss(probs, labels, 3, size))


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_single_class(implementation):
  probs, labels = random_case(5, c=1)
  got = affinity.affinity_loss(probs, labels, num_classes=1, size=1, implementation=implementation)
  assert_close(got, ref.affinity_loss(probs, labels, 1, 1))
  assert float(got[0]) == 0.0  # no pair can be an edge with one class


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_every_pixel_ignored_gives_zero_not_nan(implementation):
  probs, _ = random_case(6)
  labels = np.full(probs.shape[:3], 255, np.int32)
  loss_fn = functools.partial(
    affinity.adaptive_affinity_loss,
    num_classes=4,
    implementation=implementation,
    edge_logits=jnp.zeros((4, 3)),
    nonedge_logits=jnp.zeros((4, 3)),
  )
  edge, nonedge = loss_fn(probs, labels)
  np.testing.assert_array_equal(edge, 0.0)
  np.testing.assert_array_equal(nonedge, 0.0)
  grads = jax.grad(lambda p: jnp.sum(sum(loss_fn(p, labels))))(probs)
  assert np.all(np.isfinite(grads)) and np.all(grads == 0.0)


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_negative_and_large_labels_are_ignored(implementation):
  probs, labels = random_case(7)
  other = labels.copy()
  other[labels == 255] = -1
  other[0, 0, 0] = 4  # == num_classes: ignored as well
  labels[0, 0, 0] = 255
  assert_close(
    affinity.affinity_loss(probs, other, num_classes=4, implementation=implementation),
    ref.affinity_loss(probs, labels, 4, 1),
  )


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_confident_correct_prediction_scores_zero(implementation):
  _, labels = random_case(8, ignore_frac=0.1)
  probs = np.asarray(jax.nn.one_hot(np.where(labels == 255, 0, labels), 4))
  edge, nonedge = affinity.adaptive_affinity_loss(
    probs,
    labels,
    num_classes=4,
    edge_logits=jnp.zeros((4, 3)),
    nonedge_logits=jnp.zeros((4, 3)),
    implementation=implementation,
  )
  np.testing.assert_allclose(edge, 0.0, atol=1e-6)
  np.testing.assert_allclose(nonedge, 0.0, atol=1e-6)


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_adaptive_matches_reference(implementation):
  probs, labels = random_case(9, n=2, h=8, w=8, c=4)
  rng = np.random.default_rng(9)
  e_logits, n_logits = rng.normal(size=(2, 4, 3)).astype(np.float32)
  edge, nonedge = affinity.adaptive_affinity_loss(
    probs,
    labels,
    num_classes=4,
    sizes=(1, 2, 3),
    edge_logits=e_logits,
    nonedge_logits=n_logits,
    implementation=implementation,
  )
  ref_edge, ref_nonedge = ref.adaptive_affinity_loss(
    probs, labels, 4, (1, 2, 3), 3.0, e_logits, n_logits
  )
  assert edge.shape == (3,) and nonedge.shape == (3,)
  assert_close(edge, ref_edge)
  assert_close(nonedge, ref_nonedge)


def test_adaptive_with_uniform_weights_is_affinity_over_k():
  probs, labels = random_case(10)
  zeros = jnp.zeros((4, 2))
  edge, nonedge = affinity.adaptive_affinity_loss(
    probs, labels, num_classes=4, sizes=(1, 3), edge_logits=zeros, nonedge_logits=zeros
  )
  for k, s in enumerate((1, 3)):
    plain = affinity.affinity_loss(probs, labels, num_classes=4, size=s)
    assert_close(edge[k], float(plain[0]) / 2)
    assert_close(nonedge[k], float(plain[1]) / 2)


def central_difference(f, x, eps=1e-5):
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[idx] += eps
    minus[idx] -= eps
    grad[idx] = (f(plus) - f(minus)) / (2 * eps)
  return grad


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_gradients_match_central_differences_of_the_reference(implementation):
  probs, labels = random_case(11, n=1, h=5, w=5, c=3, ignore_frac=0.1)
  rng = np.random.default_rng(11)
  e_logits, n_logits = rng.normal(size=(2, 3, 2))
  sizes, margin = (1, 2), 2.0  # margin 2 keeps edges active but away from the relu kink

  def jax_total(p, e, n):
    edge, nonedge = affinity.adaptive_affinity_loss(
      p,
      labels,
      num_classes=3,
      sizes=sizes,
      margin=margin,
      edge_logits=e,
      nonedge_logits=n,
      implementation=implementation,
    )
    return jnp.sum(edge) + jnp.sum(nonedge)

  def ref_total(p, e, n):
    edge, nonedge = ref.adaptive_affinity_loss(p, labels, 3, sizes, margin, e, n)
    return float(np.sum(edge) + np.sum(nonedge))

  grads = jax.grad(jax_total, argnums=(0, 1, 2))(
    probs, e_logits.astype(np.float32), n_logits.astype(np.float32)
  )
  expected = (
    central_difference(lambda p: ref_total(p, e_logits, n_logits), probs),
    central_difference(lambda e: ref_total(probs, e, n_logits), e_logits),
    central_difference(lambda n: ref_total(probs, e_logits, n), n_logits),
  )
  for got, want in zip(grads, expected):
    assert np.abs(want).max() > 1e-3  # the gradient is not trivially zero
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-3, atol=2e-5)


def straightforward_aaf(probs, labels, num_classes, sizes, margin, edge_logits, nonedge_logits):
  """The spec in plain jnp, one [N,H,W,C] element mask per offset: what autodiff would see."""
  probs = probs.astype(jnp.float32)
  _, h, w, _ = probs.shape
  valid = (labels >= 0) & (labels < num_classes)
  one_hot = jax.nn.one_hot(jnp.where(valid, labels, -1), num_classes)  # [N,H,W,C]
  w_edge = jax.nn.softmax(edge_logits, -1)[jnp.where(valid, labels, 0)]  # [N,H,W,K]
  w_nonedge = jax.nn.softmax(nonedge_logits, -1)[jnp.where(valid, labels, 0)]

  def shift(x, dy, dx, s, fill):  # x at i + (dy, dx), `fill` outside the image
    x = jnp.pad(x, [(0, 0), (s, s), (s, s)] + [(0, 0)] * (x.ndim - 3), constant_values=fill)
    return x[:, s + dy : s + dy + h, s + dx : s + dx + w]

  p = jnp.clip(probs, 1e-4, 1.0)
  np_ = jnp.clip(1.0 - probs, 1e-4, 1.0)
  edges, nonedges = [], []
  for k, s in enumerate(sizes):
    e_sum = n_sum = e_cnt = n_cnt = 0.0
    for dy, dx in ref.offsets(s):
      q, nq = shift(p, dy, dx, s, 0.5), shift(np_, dy, dx, s, 0.5)
      kl = q * jnp.log(q / p) + nq * jnp.log(nq / np_)
      kept = valid & shift(valid, dy, dx, s, False) & shift(valid, -dy, -dx, s, False)
      kept = kept[..., None]
      is_edge = kept & (one_hot != shift(one_hot, dy, dx, s, 0.0))
      is_nonedge = kept & (one_hot == shift(one_hot, dy, dx, s, 0.0))
      e_sum += jnp.sum(jnp.where(is_edge, jax.nn.relu(margin - kl) * w_edge[..., k : k + 1], 0.0))
      n_sum += jnp.sum(jnp.where(is_nonedge, kl * w_nonedge[..., k : k + 1], 0.0))
      e_cnt += jnp.sum(is_edge)
      n_cnt += jnp.sum(is_nonedge)
    edges.append(jnp.where(e_cnt > 0, e_sum / jnp.maximum(e_cnt, 1), 0.0))
    nonedges.append(jnp.where(n_cnt > 0, n_sum / jnp.maximum(n_cnt, 1), 0.0))
  return jnp.stack(edges), jnp.stack(nonedges)


def with_clip_bounds(probs):
  """probs with some entries exactly at 0, 1 and the clip floor, where clip's slope is 0 or 1/2."""
  probs = probs.copy()
  probs[0, 1, 1] = np.eye(probs.shape[-1])[0]  # p = 1 and p = 0
  probs[0, 2, 3, :2] = np.float32(1e-4)  # p on the lower clip bound
  probs[1, 0, 0, 0] = 1.0 - np.float32(1e-4)
  return probs


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_custom_gradient_matches_autodiff_of_the_straightforward_form(implementation):
  probs, labels = random_case(14)
  probs = with_clip_bounds(probs)  # jnp.clip's slope there is 1/2 (on a bound) or 0
  rng = np.random.default_rng(14)
  e_logits, n_logits = rng.normal(size=(2, 4, 3)).astype(np.float32)
  weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(2, 3)), jnp.float32)  # distinct cotangents

  def total(fn):
    def f(p, e, n):
      edge, nonedge = fn(p, e, n)
      return jnp.sum(weights[0] * edge) + jnp.sum(weights[1] * nonedge)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

  ours = total(
    lambda p, e, n: affinity.adaptive_affinity_loss(
      p,
      labels,
      num_classes=4,
      sizes=(1, 2, 3),
      margin=3.0,
      edge_logits=e,
      nonedge_logits=n,
      implementation=implementation,
    )
  )
  plain = total(lambda p, e, n: straightforward_aaf(p, labels, 4, (1, 2, 3), 3.0, e, n))
  (value, grads), (want_value, want_grads) = (
    ours(probs, e_logits, n_logits),
    plain(probs, e_logits, n_logits),
  )
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_gradient_of_vmap_and_bfloat16(implementation):
  probs, labels = random_case(15, n=1)
  stacked_p, stacked_l = np.stack([probs, probs[:, ::-1]]), np.stack([labels, labels[:, ::-1]])
  e_logits = jnp.asarray(np.random.default_rng(15).normal(size=(4, 2)), jnp.float32)

  def total(p, l, e):
    edge, nonedge = affinity.adaptive_affinity_loss(
      p,
      l,
      num_classes=4,
      sizes=(1, 2),
      edge_logits=e,
      nonedge_logits=-e,
      implementation=implementation,
    )
    return jnp.sum(edge) + 2.0 * jnp.sum(nonedge)

  scale = jnp.array([1.0, 3.0])
  batched = jax.grad(
    lambda p, e: jnp.sum(scale * jax.vmap(total, (0, 0, None))(p, stacked_l, e)), argnums=(0, 1)
  )(stacked_p, e_logits)
  singles = [
    jax.grad(total, argnums=(0, 2))(stacked_p[b], stacked_l[b], e_logits) for b in range(2)
  ]
  for b in range(2):
    np.testing.assert_allclose(batched[0][b], scale[b] * singles[b][0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
    batched[1], scale[0] * singles[0][1] + scale[1] * singles[1][1], rtol=1e-5, atol=1e-7
  )
  half = jnp.asarray(probs).astype(jnp.bfloat16)
  grad_half = jax.grad(total)(half, labels, e_logits)
  assert grad_half.dtype == jnp.bfloat16
  grad_rounded = jax.grad(total)(half.astype(jnp.float32), labels, e_logits)
  np.testing.assert_allclose(
    grad_half.astype(np.float32),
    grad_rounded,
    rtol=1e-2,
    atol=1e-2 * float(jnp.abs(grad_rounded).max()),
  )


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_gradients_finite_at_exact_zero_and_one(implementation):
  labels = np.array([[[0, 1, 1], [0, 0, 1], [2, 2, 255]]], np.int32)
  probs = np.asarray(jax.nn.one_hot(np.array([[[0, 1, 2], [1, 0, 1], [2, 0, 0]]]), 3))

  def total(p):
    edge, nonedge = affinity.adaptive_affinity_loss(
      p,
      labels,
      num_classes=3,
      sizes=(1,),
      edge_logits=jnp.zeros((3, 1)),
      nonedge_logits=jnp.zeros((3, 1)),
      implementation=implementation,
    )
    return jnp.sum(edge) + jnp.sum(nonedge)

  assert float(total(probs)) > 0
  grads = jax.grad(total)(probs)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_jit_vmap_and_bfloat16(implementation):
  probs, labels = random_case(12)
  zeros = jnp.zeros((4, 3))
  fn = jax.jit(
    affinity.adaptive_affinity_loss,
    static_argnames=('num_classes', 'sizes', 'margin', 'implementation'),
  )
  eager = affinity.adaptive_affinity_loss(
    probs,
    labels,
    num_classes=4,
    edge_logits=zeros,
    nonedge_logits=zeros,
    implementation=implementation,
  )
  jitted = fn(
    probs,
    labels,
    num_classes=4,
    sizes=(1, 2, 3),
    margin=3.0,
    edge_logits=zeros,
    nonedge_logits=zeros,
    implementation=implementation,
  )
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  # vmap over a leading axis of ensembles: each slice equals its own call.
  stacked_p, stacked_l = np.stack([probs, probs[::-1]]), np.stack([labels, labels[:, ::-1]])
  vmapped = jax.vmap(
    lambda p, l: affinity.affinity_loss(p, l, num_classes=4, implementation=implementation)
  )(stacked_p, stacked_l)
  for b in range(2):
    single = affinity.affinity_loss(
      stacked_p[b], stacked_l[b], num_classes=4, implementation=implementation
    )
    np.testing.assert_allclose(np.array(vmapped)[:, b], single, rtol=1e-6)
  half = affinity.affinity_loss(
    probs.astype(jnp.bfloat16), labels, num_classes=4, implementation=implementation
  )
  assert half[0].dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(probs).astype(jnp.bfloat16).astype(jnp.float32))
  assert_close(half, ref.affinity_loss(rounded, labels, 4, 1))


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_no_five_dimensional_intermediate(implementation):
  """Nothing of shape [N,H,W,C,8] (or any rank-5 array) is built, forward or backward.

  The Pallas kernels' refs are the padded inputs (padded by 2 * 3 and to whole column blocks
  and a power-of-two C), and what they compute inside stays in registers.
  """
  probs, labels = random_case(13)

  def total(p, e, n):
    edge, nonedge = affinity.adaptive_affinity_loss(
      p, labels, num_classes=4, edge_logits=e, nonedge_logits=n, implementation=implementation
    )
    return jnp.sum(edge + nonedge)

  jaxpr = jax.make_jaxpr(jax.grad(total, argnums=(0, 1, 2)))(
    probs, jnp.zeros((4, 3)), jnp.zeros((4, 3))
  )
  n, h, w, c = probs.shape
  limit = n * (h + 6) * (w + 6) * c  # views padded by s <= 3 are fine; 8 stacked copies are not
  assert limit < 8 * probs.size
  if implementation == 'pallas':
    layout = affinity_pallas._layout(probs.shape, (1, 2, 3))
    limit = n * (h + 2 * layout.pad) * (layout.blocks * layout.block + 2 * layout.pad) * c

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        shape = getattr(var.aval, 'shape', ())
        assert len(shape) <= 4 and int(np.prod(shape)) <= limit, (eqn.primitive, shape)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)


def test_loss_decay():
  np.testing.assert_allclose(affinity.loss_decay(0, 100), 1.0)
  np.testing.assert_allclose(affinity.loss_decay(50, 100), 10**-0.5, rtol=1e-6)
  np.testing.assert_allclose(affinity.loss_decay(100, 100), 0.1, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(affinity.loss_decay)(jnp.int32(25), 100), 10**-0.25, rtol=1e-6)
  with pytest.raises(ValueError, match='num_steps'):
    affinity.loss_decay(1, 0)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(probs=np.zeros((2, 4, 4)), labels=np.zeros((2, 4, 4), np.int32)), r'probs.*rank 4'),
    (dict(labels=np.zeros((2, 4, 4, 1), np.int32)), r'labels.*rank 3'),
    (dict(labels=np.zeros((2, 4, 5), np.int32)), r'agree on \[N,H,W\].*\[2, 4, 5\]'),
    (dict(labels=np.zeros((3, 4, 4), np.int32)), r'agree on \[N,H,W\]'),
    (dict(labels=np.zeros((2, 4, 4), np.float32)), r'labels must be an integer dtype.*float32'),
    (dict(probs=np.zeros((2, 4, 4, 3), np.int32)), r'probs must be a floating dtype'),
    (dict(num_classes=5), r'3 channels but num_classes=5'),
    (dict(size=0), r'size must hold ints >= 1.*0'),
    (dict(implementation='triton'), r"implementation must be one of \('xla', 'pallas'\).*'triton'"),
  ],
)
def test_bad_input_affinity(kwargs, match):
  args = dict(
    probs=np.full((2, 4, 4, 3), 1 / 3, np.float32),
    labels=np.zeros((2, 4, 4), np.int32),
    num_classes=3,
  )
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    affinity.affinity_loss(args.pop('probs'), args.pop('labels'), **args)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(sizes=()), r'sizes must name at least one'),
    (dict(sizes=(1, -2)), r'sizes must hold ints >= 1.*-2'),
    (dict(edge_logits=np.zeros((3, 2))), r'edge_logits must have shape.*\[3, 3\].*\[3, 2\]'),
    (dict(nonedge_logits=np.zeros((4, 3))), r'nonedge_logits must have shape.*\[4, 3\]'),
  ],
)
def test_bad_input_adaptive(kwargs, match):
  args = dict(num_classes=3, edge_logits=np.zeros((3, 3)), nonedge_logits=np.zeros((3, 3)))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    affinity.adaptive_affinity_loss(
      np.full((1, 4, 4, 3), 1 / 3, np.float32), np.zeros((1, 4, 4), np.int32), **args
    )


# ---- properties -------------------------------------------------------------------------

_total_aaf = jax.jit(
  lambda p, l, e, n: jnp.stack(
    affinity.adaptive_affinity_loss(
      p, l, num_classes=4, sizes=(1, 2), edge_logits=e, nonedge_logits=n
    )
  )
)
_PROPS = hypothesis.settings(max_examples=15, deadline=None, derandomize=True)


@_PROPS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_property_symmetries(seed):
  probs, labels = random_case(seed, n=3, h=6, w=6)
  rng = np.random.default_rng(seed)
  e, n = rng.normal(size=(2, 4, 2)).astype(np.float32)
  base = _total_aaf(probs, labels, e, n)
  order = rng.permutation(3)
  variants = {
    'batch order': (probs[order], labels[order]),
    'left-right': (probs[:, :, ::-1], labels[:, :, ::-1]),
    'up-down': (probs[:, ::-1], labels[:, ::-1]),
    'transpose': (probs.transpose(0, 2, 1, 3), labels.transpose(0, 2, 1)),
  }
  for name, (p, l) in variants.items():
    np.testing.assert_allclose(
      _total_aaf(np.ascontiguousarray(p), np.ascontiguousarray(l), e, n),
      base,
      rtol=2e-5,
      atol=1e-7,
      err_msg=name,
    )


@_PROPS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_property_class_permutation(seed):
  probs, labels = random_case(seed, n=2, h=6, w=6)
  rng = np.random.default_rng(seed)
  e, n = rng.normal(size=(2, 4, 2)).astype(np.float32)
  perm = rng.permutation(4)  # new class id of old class c is perm[c]
  new_labels = np.where(labels == 255, 255, perm[np.minimum(labels, 3)]).astype(np.int32)
  inverse = np.argsort(perm)
  new_probs = probs[..., inverse]  # channel perm[c] of the new tensor holds old channel c
  np.testing.assert_allclose(
    _total_aaf(new_probs, new_labels, e[inverse], n[inverse]),
    _total_aaf(probs, labels, e, n),
    rtol=2e-5,
    atol=1e-7,
  )


_total_af = jax.jit(lambda p, l: sum(affinity.affinity_loss(p, l, num_classes=4, size=1)))


@_PROPS
@hypothesis.given(data=st.data())
def test_property_switching_a_pixel_raises_the_loss(data):
  h, w = 6, 8
  boundary = data.draw(st.integers(1, w - 1), label='boundary column')
  row = data.draw(st.integers(0, h - 1), label='row')
  a, b = data.draw(st.permutations(range(4)))[:2]
  labels = np.full((1, h, w), a, np.int32)
  labels[:, :, boundary:] = b
  probs = np.asarray(jax.nn.one_hot(labels, 4)) * 0.96 + 0.01  # confident and correct
  switched = probs.copy()
  switched[0, row, boundary - 1] = switched[0, row, boundary]  # predict the neighbour's class
  assert float(_total_af(switched, labels)) > float(_total_af(probs, labels))


def test_pallas_kernels_lower_to_triton_for_gpus():
  """Forward and backward lower through Pallas's Triton rules for 'cuda', from this CPU host.

  This catches what the Triton lowering refuses (slices of loaded values, non-power-of-two
  blocks, unsupported primitives) without a GPU; Triton's own compile to PTX needs one.
  """
  pytest.importorskip('jax._src.lib.triton', reason='this jaxlib has no Triton dialect')
  probs, labels = random_case(16, n=1, h=5, w=6, c=3)

  def total(p, e):
    edge, nonedge = affinity.adaptive_affinity_loss(
      p,
      labels,
      num_classes=3,
      sizes=(1, 2),
      edge_logits=e,
      nonedge_logits=e,
      implementation='pallas',
    )
    return jnp.sum(edge) + jnp.sum(nonedge)

  def compiled_for_gpu(probs, labels, num_classes, sizes, margin):  # not interpreted, on any host
    return affinity_pallas._pair_sums_jit(probs, labels, num_classes, sizes, margin, False)

  with mock.patch.object(affinity_pallas, 'pair_sums', compiled_for_gpu), _an_h200_for_triton():
    lowered = (
      jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
      .trace(probs, jnp.zeros((3, 2)))
      .lower(lowering_platforms=('cuda',))
    )
  assert lowered.as_text().count('triton') == 2  # the forward and the backward kernel


def _an_h200_for_triton():
  """From jax 0.11 the Triton lowering asks the local GPU for its compute capability and fails
  on a host without one; this names an H200 instead (jax 0.10 asks nothing: no patch). The
  module that answers is jax._src.pallas.triton.gpu_info until jax 0.12.0, jax._src.gpu_info
  from 0.12.1."""
  for name in ('jax._src.gpu_info', 'jax._src.pallas.triton.gpu_info'):
    try:
      gpu_info = importlib.import_module(name)
    except ImportError:
      continue
    h200 = gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H200)
    return mock.patch.object(gpu_info, 'get_gpu_info', return_value=h200)
  return contextlib.nullcontext()


@pytest.mark.parametrize('implementation', affinity.IMPLEMENTATIONS)
def test_rows_wider_than_one_kernel_block(implementation):
  """Width 40 spans two of the fused kernels' column blocks (and pads the second)."""
  width = affinity_pallas.BLOCK_WIDTH + 8
  probs, labels = random_case(17, n=1, h=4, w=width, c=3)
  rng = np.random.default_rng(17)
  e_logits, n_logits = rng.normal(size=(2, 3, 2)).astype(np.float32)

  def total(fn):
    return jax.jit(
      jax.value_and_grad(lambda p: jnp.sum(jnp.stack(fn(p)) * jnp.array([[1.0], [2.0]])))
    )

  value, grad = total(
    lambda p: affinity.adaptive_affinity_loss(
      p,
      labels,
      num_classes=3,
      sizes=(1, 3),
      edge_logits=e_logits,
      nonedge_logits=n_logits,
      implementation=implementation,
    )
  )(probs)
  want_value, want_grad = total(
    lambda p: straightforward_aaf(p, labels, 3, (1, 3), 3.0, e_logits, n_logits)
  )(probs)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  assert np.abs(want_grad[:, :, affinity_pallas.BLOCK_WIDTH :]).max() > 1e-3
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())


def test_pallas_refuses_a_backend_it_has_no_lowering_for():
  probs, labels = random_case(18, n=1, h=3, w=3, c=2)
  with (
    mock.patch.object(jax, 'default_backend', return_value='tpu'),
    pytest.raises(ValueError, match=r"Triton on GPUs.*backend 'tpu'.*implementation='xla'"),
  ):
    affinity.affinity_loss(probs, labels, num_classes=2, implementation='pallas')
