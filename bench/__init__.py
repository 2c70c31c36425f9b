"""kimi-free-api's benchmark: `python -m bench.run` (end to end) and `python -m bench.micro`
(the translator alone). See docs/benchmarks.md."""
