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

# The documentation site, offline (Quarto users: nbdev_docs reads the same _quarto.yml): every notebook executed
# (IN_TEST=1 make docs: the small test budget), processed by nbdev (API reference), rendered by smalldocs into _site/.
# Pages are cached in _site_build/ until their notebook or the library changes. Open _site/index.html (the search box
# needs a server: python -m http.server -d _site).
.PHONY: docs chromium
docs: install
	$(PY) -m nnunet_nb.docs site

# Headless Chromium for tests/test_docs_site.py: Debian's package, installed when missing (root, else sudo).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if command -v apt-get >/dev/null 2>&1; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium; \
	else echo "chromium not found and no apt-get: install Chromium (or set CHROMIUM=/path/to/it) for tests/test_docs_site.py"; fi
test-pytest: chromium

# The main job, on the built-in example dataset (CPU, minutes). Data goes to $(DEMO)/.
# The commands are the ones a nnU-Net user types (nnUNetv2_<verb> -> nnunet_nb_<verb>). Two things are sized for a CPU:
# a copy of the plans with small patches and networks (nnUNetPlansDemo, by nnunet_nb_shrink_plans) and the training
# budget (DEMO_BUDGET; nnU-Net's is 1000 epochs x 250 iterations on a GPU). Tiny networks run fastest with one thread
# per process on a small machine (OMP_NUM_THREADS=1; the augmentation runs in one more process).
DEMO_BUDGET ?= --epochs 50 --iterations_per_epoch 25 --val_iterations_per_epoch 5
demo: install
	@out=$(abspath $(DEMO)); export nnUNet_raw=$$out/nnUNet_raw nnUNet_preprocessed=$$out/nnUNet_preprocessed \
	  nnUNet_results=$$out/nnUNet_results nnUNet_n_proc_DA=1 OMP_NUM_THREADS=1; set -e; start=$$(date +%s); \
	echo "The demo starts from scratch in $$out (an earlier demo there is removed)."; rm -rf $$out; \
	step() { echo; echo "== $$(date +%T) $${*#$(BIN)/}"; "$$@"; }; \
	step $(BIN)/nnunet_nb_make_example_dataset -d 1 --kind ct --size tiny --cases 20 --test_cases 5 -np $(NP); \
	name=$$($(BIN)/nnunet_nb_find_dataset 1); raw=$$nnUNet_raw/$$name; results=$$nnUNet_results/$$name; \
	step $(BIN)/nnunet_nb_plot_overlay_pngs -d 1 -o $$out/overlays -np $(NP); \
	step $(BIN)/nnunet_nb_plan_and_preprocess -d 1 -c 2d 3d_fullres --verify_dataset_integrity -npfp $(NP) -np $(NP); \
	step $(BIN)/nnunet_nb_shrink_plans -d 1 -c 2d 3d_fullres -o nnUNetPlansDemo --patch_size 2d=32x32 3d_fullres=8x32x32; \
	step $(BIN)/nnunet_nb_preprocess -d 1 -plans_name nnUNetPlansDemo -c 2d 3d_fullres -np $(NP); \
	step $(BIN)/nnunet_nb_run_folds -d 1 -c 2d 3d_fullres -f 0 1 -p nnUNetPlansDemo --npz $(DEMO_BUDGET) -device cpu; \
	step $(BIN)/nnunet_nb_find_best_configuration 1 -c 2d 3d_fullres -p nnUNetPlansDemo -f 0 1 -np $(NP); \
	echo; echo "== the inference instructions above, run on imagesTs (INPUT_FOLDER) into $$out/predictions (OUTPUT_FOLDER)"; \
	grep '^nnunet_nb_' $$results/inference_instructions.txt | sed -e "s#INPUT_FOLDER#$$raw/imagesTs#g" \
	  -e "s#OUTPUT_FOLDER#$$out/predictions#g" -e "/^nnunet_nb_predict /s#\$$# -device cpu#" \
	  -e "s#^nnunet_nb_#$(BIN)/nnunet_nb_#" > $$out/inference_commands.sh; \
	cat $$out/inference_commands.sh; rm -rf $$out/predictions*; bash -e $$out/inference_commands.sh; \
	step $(BIN)/nnunet_nb_evaluate_folder $$raw/labelsTs $$out/predictions_PP -djfile $$raw/dataset.json \
	  -pfile $$nnUNet_preprocessed/$$name/nnUNetPlansDemo.json -o $$out/test_summary.json -np $(NP); \
	step $(BIN)/nnunet_nb_plot_overlay_pngs -d 1 --predictions $$out/predictions_PP -o $$out/prediction_pngs -np $(NP); \
	echo; echo "Demo finished in $$(( $$(date +%s) - start )) s. Where everything is:"; \
	echo "  raw dataset:            $$raw (imagesTs/labelsTs: the held-out cases)"; \
	echo "  overlay PNGs:           $$out/overlays"; \
	echo "  fingerprint, plans:     $$nnUNet_preprocessed/$$name/dataset_fingerprint.json, nnUNetPlans.json, nnUNetPlansDemo.json"; \
	echo "  preprocessed data:      $$nnUNet_preprocessed/$$name/nnUNetPlansDemo_2d, nnUNetPlansDemo_3d_fullres"; \
	echo "  trained folds:          $$results/nnUNetTrainer__nnUNetPlansDemo__{2d,3d_fullres}/fold_{0,1}"; \
	echo "                          (each: checkpoints, progress.png, validation/summary.json, train_fold.ipynb)"; \
	echo "  best configuration:     $$results/inference_information.json, inference_instructions.txt"; \
	echo "  test predictions:       $$out/predictions (postprocessed: $$out/predictions_PP)"; \
	echo "  test Dice:              $$out/test_summary.json"; \
	echo "  prediction pictures:    $$out/prediction_pngs"

clean-demo:
	rm -rf $(DEMO)
