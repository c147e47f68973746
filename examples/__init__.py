"""Runnable zcell examples; each module also defines actors nodes can host.

Run one as a script (``python examples/hello.py``), or host its actors on a node
(``zcell node -A examples.hello``): importing a module never runs its demo.
"""
