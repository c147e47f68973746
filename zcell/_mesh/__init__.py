"""Mesh layer (internal): the node façade and lifecycle, membership and liveness,
messaging and pending calls, the directory, discovery, and program-thread ports.

Built on `zcell._transport`; see docs/architecture.md for the layers.
"""
