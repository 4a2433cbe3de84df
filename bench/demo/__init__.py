"""Demo and test fixtures: the synthetic dataset and tiny random-initialized checkpoints.

`bench make-data` / `bench make-models` and the test suite use them; nothing that runs on a user's
real data imports this package.
"""
