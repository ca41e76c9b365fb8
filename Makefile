# Two commands for a fresh machine:
#   make demo   set up .venv, then roll out the shipped policy on seed 0 and write a video
#   make test   set up .venv, then run the fast test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export SDL_VIDEODRIVER ?= dummy

.PHONY: demo test test-slow lint clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (a wheel on this machine's disk), so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,vision]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python scripts/rollout.py --sampler pcm --seed 0 --video outputs/rollout_seed0.mp4

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
