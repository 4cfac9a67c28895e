import os
import sys

# Tests import helpers that live beside them (the float64 references, tiny configs) and the
# configs package at the repository root, also in pytest-xdist workers.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))
