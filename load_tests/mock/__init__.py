"""A small OpenAI-compatible server with set per-variant latencies, errors and a switch schedule,
for testing the load-test tool itself (`python -m load_tests mock-server`).

spec.py parses variant profiles and the schedule; app.py serves them (FastAPI); server.py is the
command. It speaks sloserve's contract: `model` = '<name>:<variant>', an `x-sloserve-variant`
header, 429 with Retry-After past `--max-inflight`, OpenAI error bodies, /controller/decisions.
"""
