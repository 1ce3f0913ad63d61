# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov's own pins conflict with ours (constraints.txt): it lives in a venv of its own,
# used only by tests/infra/test_project_template.py. Its version is the one pinned in constraints.txt.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
# asl-validator (npm) checks the bulk workflow's Distributed Map ASL (tests/workflow/test_bulk.py);
# pinned here, installed into .tools/ (node 20 + npm on the machine).
ASL_VALIDATOR_VERSION := 4.0.0
NODE_TOOLS_STAMP := .tools/.asl-validator-$(ASL_VALIDATOR_VERSION)
export SAGEMAKER_SUPPRESS_V2_WARNING := 1

.PHONY: install tools browser demo test bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools<81" wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

tools: $(TOOLS_STAMP) $(NODE_TOOLS_STAMP)

$(NODE_TOOLS_STAMP):
	npm install --silent --no-audit --no-fund --prefix .tools asl-validator@$(ASL_VALIDATOR_VERSION)
	touch $(NODE_TOOLS_STAMP)

$(TOOLS_STAMP): constraints.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/bin/python -m pip install -q "$$(grep '^checkov==' constraints.txt)"
	touch $(TOOLS_STAMP)

demo: install
	$(BIN)/scones demo

# The Studio's browser tests (tests/app/ui) drive Debian's chromium through chromium-driver:
# installed from Debian's packages when missing (CI runs as root), never downloaded at run time.
browser:
	@test -x /usr/bin/chromedriver || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "the Studio's browser tests need chromium + chromium-driver: sudo apt-get install chromium chromium-driver"; \
	  fi; }

# Whole test files go to TEST_WORKERS processes (pytest-xdist, --dist loadfile: a file's
# module fixtures, e.g. the Studio story's one server, stay in one worker). Most tests wait
# on subprocesses, endpoints and moto rather than compute, so 3 workers keep 2 cores busy.
TEST_WORKERS ?= 3

test: install tools browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: install
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_workflow.py
	$(BIN)/python benchmarks/bench_lambdas.py
	$(BIN)/python benchmarks/bench_photos.py
	$(BIN)/python benchmarks/bench_decode_memory.py
	$(BIN)/python benchmarks/bench_endpoint_memory.py
	$(BIN)/python benchmarks/bench_definition.py
	$(BIN)/python benchmarks/bench_bulk.py
	$(BIN)/python benchmarks/bench_calibration.py
	$(BIN)/python benchmarks/monitor_run.py

clean:
	rm -rf $(VENV) $(TOOLS) .tools .scones build *.egg-info
