# Common tasks; each is one plain command you can also type yourself. Every
# target uses the virtual environment .venv (made on first use), as the README does.
.PHONY: install test lint format serve demo

VENV = .venv
BIN = $(VENV)/bin

$(BIN)/activate:
	python3 -m venv $(VENV)

install: $(BIN)/activate
	$(BIN)/pip install -e '.[test]'

test: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/pytest

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

serve: install
	$(BIN)/payload-stats serve

demo: install
	$(BIN)/payload-stats serve --demo
