# Two commands matter: `make demo` and `make test`. Both set themselves up idempotently.
# Triton's Python-backend stub embeds the system libpython3.11: a venv made from that same interpreter keeps the
# stub's standard library consistent (a pyenv 3.11.7 stdlib under libpython 3.11.2 fails to import _ssl).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11) python3.11)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TINY_MODEL := build/tiny-flux-fill
TYPECHECK_TREE := build/typecheck

.PHONY: demo test lint unit integration tiny-model readme lock bench chaos chaos-push saturation soak priority fairness mutants clean images

LOCKS := requirements/triton.txt requirements/bridge.txt
# The venv takes torch's CPU build, explicitly: on plain PyPI `torch==2.13.0` IS the CUDA 13 build (several GB of
# nvidia-* wheels). A local CPU wheel is used when one lies in TORCH_WHEELS (this project's machines keep one
# there); otherwise pip takes 2.13.0+cpu from PyTorch's CPU wheel index. The Triton image takes a CUDA build.
TORCH_VERSION := 2.13.0
TORCH_WHEELS ?= /opt/wheels
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_LOCAL := $(firstword $(wildcard $(TORCH_WHEELS)/torch-$(TORCH_VERSION)+cpu-*.whl))
TORCH_INSTALL := $(if $(TORCH_LOCAL),$(TORCH_LOCAL),--index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple torch==$(TORCH_VERSION)+cpu)

$(INSTALLED): pyproject.toml setup.py $(LOCKS)
	@test -x "$$(command -v $(PYTHON))" || { echo "make: $(PYTHON) not found: install Python 3.11 with its shared library (Debian/Ubuntu: apt install python3.11 python3.11-venv libpython3.11); see the README's Prerequisites" >&2; exit 2; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, the CPU build (see TORCH_INSTALL): the later installs then find it satisfied.
	$(BIN)/pip install --quiet $(TORCH_INSTALL)
	# The lock files hold what the tests ran with (and what the images install): a fresh venv gets the same.
	$(BIN)/pip install --quiet $(addprefix -c ,$(LOCKS)) -e '.[model,serve,client,bridge,bench,dev]'
	touch $@

tiny-model: $(INSTALLED)
	$(BIN)/fluxfill tiny-model --output $(TINY_MODEL)

demo: $(INSTALLED)
	$(BIN)/python demo/run_demo.py --tiny-model $(TINY_MODEL) --output out/chelsea-inpainted.png

# mypy cannot follow the editable install's package-dir mapping, so it reads a tree of links
# that mirrors the installed names (fluxfill.inpaint -> inpaint/, ...).
$(TYPECHECK_TREE)/fluxfill:
	mkdir -p $@
	ln -sfn ../../../inpaint $@/inpaint
	ln -sfn ../../../client $@/client
	ln -sfn ../../../bridge $@/bridge

lint: $(INSTALLED) $(TYPECHECK_TREE)/fluxfill
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# One run: mypy analyses what they all import (torch, numpy, the Google clients) once. Three runs with
	# options of their own took 3.5 minutes on a clean clone (each its own cache), this one about 1.
	# The demo's two scripts are modules of their folder (run_demo imports job_path as a sibling).
	MYPYPATH=$(TYPECHECK_TREE):demo $(BIN)/mypy -p fluxfill.inpaint -p fluxfill.client -p fluxfill.bridge -p bench -p chaos \
		-m tests.unit.test_chaos_invariants -m tests.unit.test_chaos_router -m tests.integration.test_chaos \
		-m run_demo -m job_path

unit: $(INSTALLED)
	$(BIN)/python -m pytest tests/unit

integration: $(INSTALLED)
	$(BIN)/python -m pytest tests/integration

# One pytest-xdist worker per core, at most 4 (each starts its own emulators and tritonservers): half the suite
# waits on processes, so two workers on CI's 2 cores cut its time by a quarter or more. A module stays on one
# worker (loadscope), so its module fixtures start once. `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

test: lint
	$(BIN)/python -m pytest --numprocesses=$(TEST_WORKERS) --dist=loadscope

clean:
	rm -rf $(VENV) build out

# Both images from the shipped Dockerfiles, built here with podman (a debootstrapped Debian base, a stand-in
# Triton base from the nvidia-pytriton wheel); tests/integration/images builds them too and starts them.
images: $(INSTALLED)
	PYTHON=$(BIN)/python deploy/images/build-local.sh

# The seven CPU benchmarks (about 14 minutes); each prints its table and writes a PNG under out/bench/.
bench: $(INSTALLED)
	$(BIN)/python -m bench.serving_overhead
	$(BIN)/python -m bench.context_request
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.crop_to_mask
	$(BIN)/python -m bench.bridge_throughput
	$(BIN)/python -m bench.result_formats
	$(BIN)/python -m bench.session_writes

# Load, soak and chaos runs of the whole job path (chaos/): exit 1 when an invariant breaks.
chaos: $(INSTALLED)
	$(BIN)/python -m chaos --jobs 500
chaos-push: $(INSTALLED)
	$(BIN)/python -m chaos --quick --delivery push
saturation: $(INSTALLED)
	$(BIN)/python -m chaos saturation
soak: $(INSTALLED)
	$(BIN)/python -m chaos soak --duration 1800
# Who waits behind whom: urgent jobs behind a bulk backlog; other users behind one user's flood.
priority: $(INSTALLED)
	$(BIN)/python -m chaos priority
fairness: $(INSTALLED)
	$(BIN)/python -m chaos fairness

# Each mutant of the exactly-one-outcome decisions and the parts under them (tests/mutants.py) must fail its
# tests: exit 1 if one survives. About two and a half hours; it changes bridge/ in place while it runs (and
# puts it back).
mutants: $(INSTALLED)
	$(BIN)/python -m tests.mutants

# requirements/*.txt: the exact versions the tests ran with, per container image (tests/unit/deploy checks them).
lock: $(INSTALLED)
	$(BIN)/python deploy/lock.py

readme: $(INSTALLED)
	$(BIN)/python -m tests.readme_tables
