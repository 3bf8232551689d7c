# Two commands set everything up: `make demo` and `make test`.
# TORCH_SPEC pins the tested torch; override it for a CUDA build, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

# Debian packages napari's OpenGL canvas needs under a virtual X screen.
GUI_DEBS := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 \
	libgl1 libegl1 libgl1-mesa-dri libxcb-image0 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3 libfontconfig1
SYSDEPS_STAMP := $(VENV)/.sysdeps

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[testing]"
	touch $@

# Only as root on Debian: install what the GUI tests need if Xvfb is missing.
$(SYSDEPS_STAMP): | $(STAMP)
	@if ! command -v Xvfb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GUI_DEBS) >/dev/null; \
		else \
			echo "Xvfb is missing: install it (Debian: sudo apt-get install $(GUI_DEBS))" >&2; exit 1; \
		fi; \
	fi
	touch $@

demo: $(STAMP)
	$(BIN)/python -m napari_dsms.demo $(CT)

test: $(STAMP) $(SYSDEPS_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info
