# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-setup
DEMO_OUT ?= out/demo

.PHONY: setup test demo bench images bench-images clean

# The venv is rebuilt when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	@echo ">> setting up $(VENV) (first run takes a few minutes: torch is large)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# ruff first: a style or import error fails in a second, before minutes of tests
test: $(STAMP)
	$(BIN)/ruff check .
	ENTROPY_FT_NO_PROGRESS=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	DEMO_OUT=$(DEMO_OUT) bash scripts/demo.sh

# Benchmarks on the real data beside the checkout (../shared); the CPU defaults take about 50 minutes
# on an idle 2-core machine. Results go to benchmarks/results/ (see docs/benchmarks.md); run on an idle machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/paper.py
	$(BIN)/python benchmarks/perf.py

# Both component images from images/ into out/images/*.oci.tar, with no container daemon (buildah,
# chroot isolation, vfs storage; debootstrap makes the base where no registry answers). Needs root and
# Debian's buildah and debootstrap (apt-get install buildah debootstrap bubblewrap); docs/deploy.md.
images:
	$(PYTHON) scripts/build_images.py

# Every compiled training component run inside the built CPU image (bubblewrap, uid 10001, no network),
# compared with kfp.local on the same inputs; writes benchmarks/results/in-image.{md,json}.
bench-images: $(STAMP)
	$(BIN)/python benchmarks/in_image.py

clean:
	rm -rf $(VENV) out .pytest_cache
