"""The one-shot supernet: one set of weights shared by every architecture of a
space, trained by sampling paths, read by one-shot trials.

  keys.py     the structural key of every variable
  bank.py     live shared variables while training; arrays and their files
"""
