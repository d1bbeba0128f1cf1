# The two README commands: `make demo` (the CPU scaling demo) and `make test`.
# Each creates (or reuses) the virtual environment .venv in the checkout.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,tpu-aot,ray,quant]'
	rm -f $(VENV)/.installed-* && touch $@

# The demo is the CPU path (an IsoFLOP sweep of tiny models, then the fit); JAX_PLATFORMS=cpu keeps
# jax from probing libtpu, which the test install adds for the AOT tests.
demo: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m launch.demo --workdir runs/isoflop_cpu

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs build *.egg-info
