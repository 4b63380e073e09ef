# Common tasks; each is one plain command you can also type yourself.
.PHONY: install test lint serve

install:
	pip install -e '.[test]'

test:
	pytest

lint:
	ruff check .

serve:
	payload-stats serve
