"""Performance scripts of bench (`make perf`): run as modules from the repository root,
`python -m benchmarks.run_all [--quick]` or one script, e.g. `python -m benchmarks.bench_harness`.
Each figure is printed next to its target and recorded as a bench metric (benchmarks.perf_results):
`bench report <perf run folder>` renders it and `bench compare` tracks it."""
