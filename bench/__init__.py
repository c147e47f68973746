"""zcell benchmarks. Each runs its parties in separate processes and prints JSON.

``bench.floor`` measures the raw ZeroMQ + gevent + msgpack floor that zcell's
figures are quoted against (see bench/README.md).
"""
