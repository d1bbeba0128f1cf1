# The two README commands: `make demo` (the CPU scaling demo) and `make test`.
# Each creates (or reuses) the virtual environment .venv in the checkout.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)

.PHONY: demo test test-long test-llamacpp install clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,tpu-aot,ray,quant,export]'
	rm -f $(VENV)/.installed-* && touch $@

# The demo is the CPU path (an IsoFLOP sweep of tiny models, then the fit); JAX_PLATFORMS=cpu keeps
# jax from probing libtpu, which the test install adds for the AOT tests.
demo: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m launch.demo --workdir runs/isoflop_cpu

test: $(STAMP)
	$(PY) -m pytest -q -m 'not long' --durations=25

# Opt-in: the tests marked long (over ~20 s each, with a faster test of their code path in `test`).
test-long: $(STAMP)
	$(PY) -m pytest -q -m long --durations=0

# Opt-in: llama-cpp-python compiles llama.cpp from source (CMAKE_BUILD_PARALLEL_LEVEL sets the
# compile jobs), then the tests marked llamacpp run the GGUF exports in it.
test-llamacpp: $(STAMP)
	$(PY) -m pip install --quiet -e '.[llamacpp]'
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -m llamacpp tests/test_export.py

clean:
	rm -rf runs build *.egg-info
