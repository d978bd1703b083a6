# nnunet_nb: the two commands of the README, and their parts.
#   make demo   set up (if needed) and run the pipeline on the built-in example dataset
#   make test   set up (if needed) and run every test
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# torch is installed first, pinned to the CPU wheel that lies on this kind of machine: an unpinned
# torch (asked for by `pip install -e .`) may pull a multi-GB CUDA build. Users with a GPU install
# their own torch first; then this step does nothing.
TORCH ?= torch==2.13.0
DEMO ?= demo_data
NP ?= 2
export nnUNet_n_proc_DA ?= 2

.PHONY: install test test-sync test-notebooks test-pytest demo readme clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install test-sync test-notebooks test-pytest

# Notebooks are the source: exporting them again (and cleaning them) must change nothing.
test-sync: install
	@tmp=$$(mktemp -d); cp -r nnunet_nb nbs README.md $$tmp/; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean >/dev/null && $(PY) -m nnunet_nb.docs readme; \
	status=0; \
	diff -r -x __pycache__ -x '*.pyc' $$tmp/nnunet_nb nnunet_nb || { echo "nnunet_nb/ was out of sync with nbs/: run nbdev_export and commit"; status=1; }; \
	diff -r -x .ipynb_checkpoints -x _quarto.yml $$tmp/nbs nbs >/dev/null || { echo "notebooks were not clean: run nbdev_clean and commit"; status=1; }; \
	cmp -s $$tmp/README.md README.md || { echo "README.md was out of sync with nbs/index.ipynb: run make readme and commit"; status=1; }; \
	rm -rf $$tmp; exit $$status

test-notebooks: install
	$(BIN)/nbdev_test --n_workers $(NP) --do_print

test-pytest: install
	$(BIN)/pytest -q tests

readme: install
	$(PY) -m nnunet_nb.docs readme

# The main job, on the built-in example dataset (CPU, minutes). Data goes to $(DEMO)/.
demo: install
	@export nnUNet_raw=$(abspath $(DEMO))/nnUNet_raw nnUNet_preprocessed=$(abspath $(DEMO))/nnUNet_preprocessed \
	        nnUNet_results=$(abspath $(DEMO))/nnUNet_results; set -e; \
	$(BIN)/nnunet_nb_make_example_dataset -d 1 --kind ct --size small --overwrite; \
	$(BIN)/nnunet_nb_verify_dataset -d 1 -np $(NP); \
	$(BIN)/nnunet_nb_plot_overlay_pngs -d 1 -o $(abspath $(DEMO))/overlays; \
	$(BIN)/nnunet_nb_plan_and_preprocess -d 1 -npfp $(NP) -c 2d 3d_fullres -np $(NP); \
	name=$$($(BIN)/nnunet_nb_find_dataset 1); \
	echo; echo "Demo artefacts:"; \
	echo "  raw dataset:       $$nnUNet_raw/$$name"; \
	echo "  overlay PNGs:      $(abspath $(DEMO))/overlays"; \
	echo "  fingerprint:       $$nnUNet_preprocessed/$$name/dataset_fingerprint.json"; \
	echo "  plans:             $$nnUNet_preprocessed/$$name/nnUNetPlans.json"; \
	echo "  preprocessed data: $$nnUNet_preprocessed/$$name/nnUNetPlans_2d, nnUNetPlans_3d_fullres"

clean-demo:
	rm -rf $(DEMO)
