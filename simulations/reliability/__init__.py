"""The reliability harness: fuzz targets, hostile peers, fault and load scenarios.

Used by ``parley bench reliability`` (:mod:`simulations.bench_reliability`) and by the tests in
``tests/reliability``; it lives here so that an installed package can run the bench and nothing
in the product or the benches imports ``tests``.
"""
