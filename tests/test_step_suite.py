"""benchmarks/step_suite.py's profile attribution: HLO op -> op_name -> part of the step."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))

import step_suite  # noqa: E402

_HLO = """
%fused_computation.3 (p.0: f32[4]) -> f32[4] {
  %p.0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%p.0, %p.0), metadata={op_name="jit(train_step)/optimizer/add"}
}

ENTRY %main.9 (a: f32[4], b: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %conv.1 = f32[4]{0} convolution(%a, %a), metadata={op_name="jit(train_step)/jvp(network)/conv"}
  %conv.2 = f32[4]{0} convolution(%a, %a), metadata={op_name="jit(train_step)/transpose(jvp(network))/conv"}
  %conv.3 = f32[4]{0} convolution(%conv.1, %conv.2)
  %loop_fusion.4 = f32[4]{0} fusion(%conv.3), kind=kLoop, calls=%fused_computation.3
  ROOT %mul.5 = f32[4]{0} multiply(%a, %a), metadata={op_name="jit(train_step)/transpose(jvp(affinity_loss))/mul"}
}
"""


def test_every_op_is_attributed_to_its_part_of_the_step():
  names = step_suite.op_names(_HLO)
  parts = {op: step_suite.part_of(names[op]) for op in names}
  assert parts['conv.1'] == 'network forward'
  assert parts['conv.2'] == 'network backward'
  # No metadata of its own: fed by a backward op, so backward (a kernel gradient's shape).
  assert parts['conv.3'] == 'network backward'
  # A fusion without metadata takes the op_name inside the computation it calls.
  assert parts['loop_fusion.4'] == 'optimizer'
  assert parts['mul.5'] == 'affinity loss'
  assert step_suite.part_of('jit(train_step)/cross_entropy/log') == 'cross-entropy'
  assert step_suite.part_of('jit(train_step)/copy') == 'other'
