# contrastlab: everything runs from a virtual environment this Makefile makes (.venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision: the versions this project is developed and tested with (see README)
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow test-dist bench gpu-check clean

$(BIN)/contrastlab: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(BIN)/contrastlab

## The main job: SimCLR on the embedded digit scenes (CPU preset), kNN + linear eval, report.
demo: install
	$(BIN)/contrastlab train simclr trainer.out_dir=runs/demo trainer.overwrite=true
	$(BIN)/contrastlab eval knn runs/demo
	$(BIN)/contrastlab eval linear runs/demo
	$(BIN)/contrastlab report runs/demo

## Unit, method, CLI and error tests (under 15 minutes on 2 CPU cores).
test: install
	$(BIN)/python -m pytest -q

## Learning checks that take minutes each.
test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-dist: install
	$(BIN)/python -m pytest -q -m distributed

## CPU benchmarks (ratios measured in one run; installs the peer library lightly for the comparison).
bench: install
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/simclr_step.py --case resnet18 --rounds 15 --out results/bench_simclr_step_resnet18_r15.json
	$(BIN)/python benchmarks/simclr_step.py --case digits --rounds 15 --threads 2 --out results/bench_simclr_step_digits.json
	$(BIN)/python benchmarks/views.py --out results/bench_views.json
	$(BIN)/python benchmarks/knn_memory.py --out results/bench_knn_memory.json
	$(BIN)/python benchmarks/negatives_overhead.py --rounds 15 --out results/bench_negatives_overhead.json
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/family_overhead.py --threads 1 --rounds 15 --out results/bench_family_overhead.json
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/dense_overhead.py --threads 1 --rounds 7 --out results/bench_dense_overhead.json
	$(BIN)/python benchmarks/end_to_end.py --models small_cnn,resnet18 --out results/bench_end_to_end.json

## On a machine with a CUDA GPU: real bf16 training steps through the library against a bare loop doing
## the same work (under 5 minutes); writes results/gpu_check_<gpu name>.json, e.g. gpu_check_h200.json.
## Check the script on a CPU: $(BIN)/python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/g.json
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf runs .pytest_cache
