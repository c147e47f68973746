"""Transport layer (internal): ZeroMQ sockets on gevent, CURVE keys and ZAP, the
heartbeat sender thread, and the loop thread that runs a node's hub.

Imports only `zcell.errors` and `zcell._wire` from zcell; see docs/architecture.md.
"""
