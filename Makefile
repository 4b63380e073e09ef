# Common tasks; each is one plain command you can also type yourself.
.PHONY: install test lint format serve

install:
	pip install -e '.[test]'

test:
	ruff check . && ruff format --check . && pytest

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

serve:
	payload-stats serve
