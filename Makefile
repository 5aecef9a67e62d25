# cityingest: `make run` brings the whole stack up, `make test` runs every check. Both set up first.
PY := .venv/bin/python
SRC := core ingest consumers api cli devstack migrations simulator tests bench scripts

.PHONY: setup run test lint typecheck pytest bench bench-ingest bench-consume bench-catchup bench-api bench-mosquitto clean

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m cli dev $(ARGS)

test: setup lint typecheck pytest

lint:
	.venv/bin/ruff check $(SRC)
	.venv/bin/ruff format --check $(SRC)

typecheck:
	.venv/bin/mypy

pytest:
	$(PY) -m pytest $(PYTEST_ARGS)

bench-ingest: setup
	$(PY) -m bench.ingest

bench-consume: setup
	$(PY) -m bench.consume

bench-catchup: setup
	$(PY) -m bench.catchup $(ARGS)

bench-api: setup
	$(PY) -m bench.api

bench-mosquitto: setup
	$(PY) -m bench.mosquitto_persist $(ARGS)

bench: setup
	$(PY) -m bench.e2e $(ARGS)

clean:
	rm -rf .cityingest .mypy_cache .ruff_cache .pytest_cache
