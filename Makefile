# The two commands of the README:
#   make demo   set up .venv, generate the demo data, train RepVGG-A0 on CPU, test it,
#               re-parameterize it, test the fused model, export it to ONNX, print a summary
#   make test   set up .venv and run the test suite
#   make int8-demo  train RepVGG-A0 and QARepVGG-A0 on the demo data, fuse, export to
#               ONNX, quantize to INT8 (post-training, and quantization-aware training
#               with tools/qat.py) and print FP32 vs PTQ vs QAT INT8 top-1 for both
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo int8-demo test lint venv clean

venv: $(STAMP)

$(STAMP): requirements/runtime.txt requirements/tests.txt requirements/deploy.txt \
		requirements/openvino.txt setup.cfg setup.py pyproject.toml
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -r requirements/runtime.txt -r requirements/tests.txt \
		-r requirements/deploy.txt -r requirements/openvino.txt
	$(VENV_PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV_PY) tools/demo.py

int8-demo: $(STAMP)
	$(VENV_PY) tools/int8_demo.py

test: $(STAMP)
	$(VENV_PY) -m ruff check repvgg_mm tools tests configs
	$(VENV_PY) -m pytest -q

lint: $(STAMP)
	$(VENV_PY) -m ruff check repvgg_mm tools tests configs

clean:
	rm -rf work_dirs data/demo

# The wheels tools/analysis/gpu_speed_check.sh installs on a bare GPU machine that has
# torch, torchvision, numpy, OpenCV and the usual scientific stack but nothing of
# OpenMMLab (pure-Python wheels, about 3.5 MB; never torch itself):
#   make gpu-wheels && WHEELS=.whl tools/analysis/gpu_speed_check.sh
GPU_WHEELS := mmengine==0.10.7 mmcv-lite==2.2.0 mmpretrain==1.2.0 addict yapf platformdirs \
	termcolor mat4py modelindex model-index ordered-set importlib-metadata==8.7.0
.PHONY: gpu-wheels
gpu-wheels: $(STAMP)
	$(VENV_PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
