"""The reference every test and benchmark compares the package against.

One example at a time with plain forward hooks, no batching, no padding, and by default no KV cache
(extraction, intervention, mc, generation, judge, ce_kl), plus the public workflow's own head ranking
and question splits (selection). Written without the package's extraction, intervention, scoring or
selection code; it shares only the model lookups of iti.models and the HeadShifts record. Benchmarks
time it as "the one-at-a-time way". Each module lists its functions at the top.
"""
