# The README's commands. `make test` is what CI runs.
PY ?= python

.PHONY: test demo docs bench
test:
	$(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=ci \
		--cov=stochrnn --cov-report=term --cov-fail-under=90

demo:
	$(PY) examples/estimator_demo.py

docs:
	$(PY) -m mkdocs build --strict
