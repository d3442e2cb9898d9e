# The front door. `make help` lists the targets and variables.
#
# Every target is one call to the runner, `python3 -m services.run <target>` (services/run/), which
# reads the variables below from the environment: Make exports the ones given on its command line.
# A stage runs as `python -m services.<stage> --config configs/$(EXP).yaml [section.key=value ...]`,
# in its Compose service (RUNNER=docker) or in a local environment built from the same lock files
# (RUNNER=local).
#
# Variables: EXP ARGS RUNNER GPU FORCE FRESH OFFLINE VENV DOCKER COMPOSE TB_PORT DOCS_PORT DOCS_SERVE HOST_UID
# HOST_GID TORCH_FLAVOUR LOCAL_WHEELS BASE_IMAGE EXTRA_CA SWEEP PLAN TRIALS SOURCE FORMAT (see `make help` and docs/).

PYTHON ?= python3
RUN = $(PYTHON) -m services.run
.DEFAULT_GOAL := help

.PHONY: help demo train dataset fit export evaluate convert rknn tensorboard images image-train \
	image-convert wheels print-images doctor setup test test-fast test-deps lock sweep report predict docs

help: ## targets and variables
	@$(RUN) $@

demo: ## the whole chain on the embedded demo data, on CPU (make train EXP=demo)
	@$(RUN) $@

train: ## the whole chain for EXP: dataset -> fit -> export -> evaluate -> convert
	@$(RUN) $@

dataset: ## CityPersons download (or demo) -> datasets/<name>/yolo/
	@$(RUN) $@

fit: ## train YOLO on the dataset: resumes an unfinished run; FRESH=1 starts anew
	@$(RUN) $@

export: ## best.pt -> ONNX (standard and RKNN heads), with parity against PyTorch
	@$(RUN) $@

evaluate: ## COCO AP (pycocotools) and CityPersons miss rate for every model format so far
	@$(RUN) $@

convert: ## RKNN head ONNX -> INT8 .rknn, quantization report, simulator evaluation, board bundle
	@$(RUN) $@

rknn: ## the old name of `make convert`
	@$(RUN) convert

sweep: ## every (variant, seed) trial of configs/sweeps/<SWEEP>.yaml as a whole chain, on Ray
	@$(RUN) $@

report: ## tables (md, LaTeX), figures and one html page for EXP or SWEEP -> artifacts/<name>/report/
	@$(RUN) $@

predict: ## draw detections of FORMAT=pt|onnx|rknn on SOURCE=<image|folder|video> -> artifacts/<EXP>/predict/
	@$(RUN) $@

tensorboard: ## serve runs/ on http://127.0.0.1:$(TB_PORT), during and after training
	@$(RUN) $@

docs: ## build docs/ into artifacts/docs/site/ and serve it on 127.0.0.1:DOCS_PORT (8000); DOCS_SERVE=0 only builds
	@$(RUN) $@

images: ## build both images from the lock files (TORCH_FLAVOUR, LOCAL_WHEELS, EXTRA_CA, BASE_IMAGE)
	@$(RUN) $@

image-train:
	@$(RUN) $@

image-convert:
	@$(RUN) $@

wheels: ## download every locked package into requirements/wheels/ (then: make images LOCAL_WHEELS=1)
	@$(RUN) $@

print-images:
	@$(RUN) $@

doctor: ## check Docker, Compose, the NVIDIA runtime and driver, shm, disk and datasets, one line each
	@$(RUN) $@

setup: ## build .venv/train and .venv/convert from the lock files
	@$(RUN) $@

test: ## build what the tests need, then run the whole suite (the demo chain, and the chain in containers)
	@$(RUN) $@

test-fast: ## the tests that need no training and no container (about 2 minutes)
	@$(RUN) $@

test-deps:
	@$(RUN) $@

lock: ## recompile requirements/*.lock from requirements/*.in (needs PyPI)
	@$(RUN) $@

# Any other word goes to the runner too, which names the target it does not know.
Makefile: ;
%:
	@$(RUN) $@
