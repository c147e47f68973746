"""Actor layer: `Actor` and its state, `ActorProxy`, and hosting actors on a node.

Programs import these names from `zcell` itself (its `__all__`); the modules here
are internal and may move. See docs/architecture.md for the layers.
"""
