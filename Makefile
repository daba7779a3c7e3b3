# Two commands do everything on a fresh machine:
#   make demo   set up, then train/evaluate/report the toy table (R50 rows 1-3) on CPU
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-browser bench lab clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.* csrc/*/*.*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q setuptools wheel ninja
	# setup.py finds the CUDA toolkit itself (CUDA_HOME, or the nvcc on PATH followed through a wrapper)
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation -e ".[dev,lab]"
	touch $@

demo: setup
	$(VENV)/bin/gcrepro demo

test: setup
	$(PY) -m pytest -q tests

# only the real-browser test of JupyterLab (in make test too): Debian's chromium driven by Playwright
test-browser: setup
	$(PY) -m pytest -q -m browser tests/test_lab_browser.py

bench: setup
	$(PY) benchmarks/gc_op.py
	$(PY) benchmarks/toy_throughput.py

# JupyterLab at the repository's root (notebooks/, runs/ and the reports all reachable), opening notebooks/;
# headless and as root too: it prints the URL with its token. Remote machine: ssh -L 8888:127.0.0.1:8888 HOST,
# then open that URL here. LAB_IP=0.0.0.0 listens on every interface (the token still guards it).
LAB_IP   ?= 127.0.0.1
LAB_PORT ?= 8888
lab: setup
	$(VENV)/bin/jupyter lab "--ServerApp.root_dir=$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
		--ip=$(LAB_IP) --port=$(LAB_PORT) --no-browser --allow-root

clean:
	rm -rf build *.egg-info gcrepro/*.so
