# Two commands on a fresh clone: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

# torch is pinned through constraints.txt: 2.13.0 is the local CPU wheel; anything else pulls CUDA.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# One torch thread per worker: two workers on two cores, no oversubscription.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

demo: $(STAMP)
	$(BIN)/securefed demo --out demo-output

# Each script prints one JSON array on stdout (bench/secagg.py includes the CKKS records).
bench: $(STAMP)
	$(BIN)/python bench/secagg.py --json
	$(BIN)/python bench/training.py --json
	$(BIN)/python bench/utility.py --json
	$(BIN)/python bench/round.py --json
	$(BIN)/python bench/transfer.py --json

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
