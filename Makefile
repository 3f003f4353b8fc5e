# Set-up and the two entry points: `make demo` and `make test`. Both create .venv when it is
# missing, install into it (re-running is cheap: the install step is skipped when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE_STAMP := $(VENV)/.core
STAMP := $(VENV)/.installed
CRF_STAMP := $(VENV)/.crf
PNGRUNS_STAMP := $(VENV)/.pngruns
DEMO_DIR ?= runs/demo
# uv installs the same pinned wheels as pip, in parallel and from its cache (a fresh clone's core
# install: about 4 s with uv's cache warm, 37 s cold, against about 60 s with pip, most of it torch's
# 4 GB of CUDA wheels). uv reads its own settings (UV_INDEX_URL), not pip.conf: where uv cannot be
# installed or fails, the same command runs with pip, and says so. `make demo USE_UV=` uses pip only.
USE_UV ?= 1
PIP_INSTALL := $(BIN)/pip install
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python
install_pkgs = echo "install $(1)"; if [ -n "$(USE_UV)" ] && [ -x $(BIN)/uv ]; then $(UV_INSTALL) $(1) || { echo "make: uv failed; installing with pip instead"; $(PIP_INSTALL) $(1); }; else $(PIP_INSTALL) $(1); fi

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: $(BIN)/python
	-[ -z "$(USE_UV)" ] || $(BIN)/pip install -q -c constraints.txt uv

# What `make demo` needs: panoptix and its dependencies, nothing for tests.
$(CORE_STAMP): $(BIN)/uv pyproject.toml constraints.txt
	@$(call install_pkgs,-q -c constraints.txt -e .)
	touch $(CORE_STAMP)

# The tests' tools, and the reference implementations they compare with. Installed without their
# dependencies: panopticapi-lite's metadata pins numpy<2 but its evaluation module needs only numpy
# and Pillow; cityscapesscripts' (the tests' Cityscapes fixture) pulls in the `typing` backport and
# requests, where its converter needs only numpy, Pillow and pyquaternion; mit-semseg's
# intersectionAndUnion (the ADE20K benchmark's mIoU) needs only numpy.
$(STAMP): $(CORE_STAMP)
	@$(call install_pkgs,-q -c constraints.txt -e '.[dev]')
	@$(call install_pkgs,-q --no-deps panopticapi-lite==0.2.0 cityscapesscripts==2.3.0 pyquaternion==0.9.9 mit-semseg==1.0.0)
	touch $(STAMP)

install: $(STAMP)

demo: $(CORE_STAMP)
	$(BIN)/panoptix demo --out $(DEMO_DIR)

# The crf extra compiles pydensecrf2 (about a minute); where that fails, the one test that compares
# the two CRF backends skips and says so.
$(CRF_STAMP): $(STAMP)
	-@$(call install_pkgs,-q -c constraints.txt -e '.[crf]')
	touch $(CRF_STAMP)

# The compiled PNG path for `panoptix evaluate` (extras/pngruns, a few seconds to build); where it
# cannot build, evaluation decodes with libspng and tests/test_png_runs.py skips and says so.
$(PNGRUNS_STAMP): $(STAMP) extras/pngruns/src/panoptix_pngruns/_pngruns.c extras/pngruns/src/panoptix_pngruns/__init__.py
	-@$(call install_pkgs,-q -c constraints.txt ./extras/pngruns)
	touch $(PNGRUNS_STAMP)

# ruff (config in pyproject.toml: line length, import order, pyupgrade) first: a lint error fails fast.
test: $(STAMP) $(CRF_STAMP) $(PNGRUNS_STAMP)
	$(BIN)/ruff check panoptix tests bench extras
	$(BIN)/python -m pytest -q tests

bench: $(STAMP) $(PNGRUNS_STAMP)
	@$(call install_pkgs,-q -c constraints.txt -e '.[bench]')
	$(BIN)/python bench/pq_speed.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/roi_align.py

clean:
	rm -rf $(VENV) runs build *.egg-info
