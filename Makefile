# Two entry points (see README): `make run` sets up and runs the default job, `make test` sets up
# and runs the test suite. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run parity test lint bench clean

setup: $(STAMP)

# torch==2.13.0 first: it resolves to the local CPU wheel, and with it installed no later
# requirement pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The default job: the recipe (configs/softmcl_anchored.py: SoftMCL anchored so that MiniLM keeps
# its meaning) on the shipped VADER data, about 15 min on 2 CPU cores with the set-up; ends with
# two lines: the held-out valence probe before vs after, and the similarity kept. Run it again to
# resume. The paper's objective alone: configs/softmcl.py.
run: $(STAMP)
	$(BIN)/python main.py --config=configs/softmcl_anchored.py --workdir=workdir/softmcl_anchored

parity: $(STAMP)
	$(BIN)/python -m softmcl_jax.models.check_parity

test: $(STAMP)
	$(BIN)/python -m pytest -q -s tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/encoder.py

clean:
	rm -rf $(VENV)
