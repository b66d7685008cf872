"""Load tests for any OpenAI-compatible server, with sloserve's variants and controller in mind.

`python -m load_tests run|sweep|report|compare|mock-server` (see load_tests/README.md). The flow:
options -> `RunConfig` -> runner (arrivals, prompts, streaming client) -> `ClientRecord`s ->
summary / time series / switch events -> files and plots. Reaches servers over HTTP only.
"""
