# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it
# needs, idempotently, into .venv (and, for the kernel side, Debian packages).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KSTAMP := $(VENV)/.kernel-tools

.PHONY: all venv kernel-tools demo test lint bench clean vm-test cri-proto

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[reconciler,dev,cri]'
	touch $(STAMP)

venv: $(STAMP)

# Re-checked every run (mounts do not survive a reboot); the script is idempotent.
kernel-tools: $(STAMP)
	bash scripts/kernel-tools.sh $(VENV)

demo: venv kernel-tools
	$(BIN)/python scripts/demo.py

test: venv kernel-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The kernel tests inside a stock Debian kernel under QEMU (scripts/vm/README.md): the host's root
# shared read-only, CO-RE objects built here for the guest's BTF first, the exit code passed back.
VM_KERNEL ?= 6.1
VM_TESTS ?= tests/bpf/core
vm-test: venv kernel-tools
	$(BIN)/python scripts/vm/run.py --kernel $(VM_KERNEL) --core-objects -- \
	  $(BIN)/python -m pytest -q -p no:cacheprovider $(VM_PYTEST_ARGS) $(VM_TESTS)

lint: venv
	$(BIN)/ruff check reconciler agent bpf tests bench
	$(BIN)/mypy reconciler agent bpf

bench: venv kernel-tools
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

# The CRI messages the agent speaks (agent/criapi/runtime.proto), compiled into the committed runtime_pb2.py/.pyi;
# the same grpcio-tools gives the same files (their protobuf floor is the `cri` extra's).
GRPC_TOOLS ?= grpcio-tools==1.85.1
cri-proto: venv
	$(BIN)/python -m pip install -q '$(GRPC_TOOLS)'
	cd agent/criapi && ../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. runtime.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
