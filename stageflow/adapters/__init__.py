"""Implementations of stageflow's ports that lean on a third-party package.

Each module here imports its package only when one of its objects is constructed or first used, never at
import time, and without the package installed says which ``pip install 'stageflow-core[...]'`` adds it.
"""
