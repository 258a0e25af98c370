"""Pure numerical core of orientlearn: numpy, TensorFlow and ASTRA only, no Scipion.

Everything here takes and returns plain arrays, so it can be scripted outside Scipion.
"""
