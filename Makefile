.PHONY: demo test lint

# Runs the demo campaign end to end on embedded defaults.
demo:
	bash scripts/demo.sh

# Runs the whole test suite (installs PostgreSQL and Redis when missing).
test:
	bash scripts/test.sh

lint:
	.venv/bin/ruff check .
