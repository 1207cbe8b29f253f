# Works with GNU make on Debian 12 (python3 3.11 + python3-venv). See README.md.
VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
BIN := $(VENV)/bin
# Re-install only when pyproject.toml changes.
STAMP := $(VENV)/.installed

.PHONY: venv up test test-stress soak clean bench bench-quick

venv: $(STAMP)

# System packages: installed with apt-get when running as root (as CI does), else named.
# Each entry is COMMAND-or-PYTHON-MODULE:PACKAGE.
UP_NEEDS := py:venv:python3-venv py:ensurepip:python3-venv
TEST_NEEDS := $(UP_NEEDS) cmd:dig:bind9-dnsutils cmd:systemd-analyze:systemd cmd:debootstrap:debootstrap cmd:systemd-nspawn:systemd-container \
	cmd:ip:iproute2 cmd:nft:nftables

define ensure_packages
	@missing=""; \
	for need in $(1); do \
	  kind=$${need%%:*}; rest=$${need#*:}; what=$${rest%%:*}; pkg=$${rest#*:}; \
	  if [ "$$kind" = py ]; then $(PYTHON) -c "import $$what" 2>/dev/null && continue; \
	  else command -v "$$what" >/dev/null 2>&1 && continue; fi; \
	  case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing </dev/null; \
	  else \
	    echo "missing system packages:$$missing; install them with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi
endef

.PHONY: up-deps test-deps
up-deps:
	$(call ensure_packages,$(UP_NEEDS))

test-deps:
	$(call ensure_packages,$(TEST_NEEDS))

$(STAMP): pyproject.toml
	$(MAKE) --no-print-directory up-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip 'setuptools>=68'
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

# A local 3-node cluster of real agent processes (data in .registry/, survives restarts);
# Ctrl-C stops it.
up: venv
	$(BIN)/registry up --nodes 3 --data-dir .registry

test: venv test-deps
	$(BIN)/python -m pytest -n auto $(PYTEST_ARGS)

# tests/integration and tests/faults STRESS_RUNS times while a busy loop occupies one core
# (tests/stress.py); each run's output in .stress/run-N.log, a summary at the end.
STRESS_RUNS ?= 3
test-stress: venv test-deps
	$(BIN)/python -m tests.stress --runs $(STRESS_RUNS) -- $(PYTEST_ARGS)

# Random fault schedules on test hosts (network namespaces; needs root) for SOAK_MINUTES minutes,
# each run SOAK_RUN_SECONDS of faults; the report (runs, operations, faults, anomalies) is printed at the end.
SOAK_MINUTES ?= 30
SOAK_RUN_SECONDS ?= 60
soak: venv test-deps
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_RUN_SECONDS=$(SOAK_RUN_SECONDS) $(BIN)/python -m pytest tests/faults -m soak -s $(PYTEST_ARGS)

# The performance suite (bench/all.py): every benchmark, one table; the JSON in bench-result.json.
# Needs etcd-server, dnsperf and dnsmasq-base for the side-by-side steps (installed when root).
BENCH_NEEDS := cmd:etcd:etcd-server cmd:dnsperf:dnsperf cmd:dnsmasq:dnsmasq-base
bench: venv
	$(call ensure_packages,$(BENCH_NEEDS))
	$(BIN)/python -m bench.all --out bench-result.json

bench-quick: venv
	$(call ensure_packages,$(BENCH_NEEDS))
	$(BIN)/python -m bench.all --quick --out bench-result.json

# Removes the virtual environment too.
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
