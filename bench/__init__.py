"""Benchmarks: mini's local backend next to the pools users would pick instead, in the same run.

`./go bench` (or `python -m bench`) writes `bench/results.json` and `bench/results.md`;
`python -m bench --quick --out /tmp/b` is a smoke run of every section in a few seconds.
"""
