import os
import sys

# Tests import helpers that live beside them (the float64 references).
sys.path.insert(0, os.path.dirname(__file__))
