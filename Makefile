# make test / make demo: create or refresh .venv when requirements.txt changed, then run.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp

.PHONY: install test check demo clean-venv

install: $(STAMP)

# The stamp is a copy of the requirements it was installed from: newer requirements.txt → reinstall.
# DeepSpeed compiles its CPU shared-memory communication op at the first start of a process group (about 50 s); it is
# built here, into this environment's own cache (.venv/torch_extensions, training.distributed.use_environment_op_cache),
# so that no run or test pays for it and another checkout's environment never rebuilds it (on a GPU machine there is
# no such op).
$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "from training.distributed import build_ops; build_ops()"
	cp requirements.txt $(STAMP)

# The whole suite, tests/unit and tests/e2e, on two workers (this machine's cores; a file's tests stay on one worker,
# so its module fixtures run once; the longest files first, in tests/conftest.py's order, not xdist's by test count),
# then its 15 slowest tests.
test: $(STAMP)
	$(PY) -m pytest tests -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# The fast tier for the edit-test loop: tests/unit, where no test starts a process (tests/conftest.py enforces it;
# every test that does is in tests/e2e), on the two workers of make test (about 50 s here; 80 s on one).
check: $(STAMP)
	$(PY) -m pytest tests/unit -q -n 2 --dist loadfile

# The main job end to end on real data that ships with scikit-learn (handwritten digits): image folder → shards →
# 2-process DeepSpeed training (CPU, gloo; the GPUs where there are some) → kNN, linear, attentive and low-shot probes
# of the trained target encoder on held-out digits beside its random init → its export to transformers and timm →
# the run's report in pictures (runs/demo/train/report/index.html) → throughput summary. The attentive probe gets 40 epochs: 1,348 images give 22 steps an epoch.
DEMO   := runs/demo
# the run's newest checkpoint, looked up when a recipe line uses it
LAST_CKPT = $$(ls -d $(DEMO)/train/checkpoints/step* | tail -1)
NPROC  ?= $(shell $(PY) -c "import torch; print(torch.cuda.device_count() or 2)" 2>/dev/null || echo 2)
# without a GPU, DeepSpeed's launcher is told so rather than warning that it found none
ACCEL  := $(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
demo: $(STAMP)
	$(PY) -m tools.digits $(DEMO)/digits --size 32
	$(PY) shard_dataset.py $(DEMO)/digits/train $(DEMO)/shards --shard-size 170 --no-progress
	$(PY) shard_dataset.py $(DEMO)/digits/val $(DEMO)/shards-val --shard-size 170 --no-progress
	rm -rf $(DEMO)/train
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH DS_ACCELERATOR=$(ACCEL) deepspeed --num_gpus $(NPROC) train.py --config configs/tiny_cpu.yaml \
		--set data.shards=$(DEMO)/shards --set run.out_dir=$(DEMO)/train
	$(PY) eval.py --checkpoint $(LAST_CKPT) \
		--train-shards $(DEMO)/shards --val-shards $(DEMO)/shards-val --attentive-epochs 40 --json $(DEMO)/probe.json
	rm -rf $(DEMO)/export
	$(PY) export.py --checkpoint $(LAST_CKPT) --out $(DEMO)/export
	$(PY) report.py $(DEMO)/train --val-shards $(DEMO)/shards-val --probe $(DEMO)/probe.json
	@$(PY) -c "import json; s = json.load(open('$(DEMO)/train/summary.json')); \
		print(f\"demo: {s['images_per_s_per_gpu']:.1f} images/s per GPU, {s['images_per_gpu_hour']:,.0f} images per GPU-hour\")"

clean-venv:
	rm -rf $(VENV)
