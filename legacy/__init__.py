"""The one-example-at-a-time reference: plain forward hooks, no batching, no KV cache.

Tests compare the package's batched pyvene paths against these modules, and benchmarks time
them as "the one-at-a-time way". Each module lists its functions at the top.
"""
