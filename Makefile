# The README's commands. `make test` is what CI runs.
PY ?= python

.PHONY: test demo estimators docs bench
test:
	$(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=ci \
		--cov=stochrnn --cov-report=term-missing:skip-covered --cov-fail-under=90

demo:
	$(PY) -m examples.action_recognition.demo --out demo_out

estimators:
	$(PY) examples/estimator_demo.py

# The site, strictly: Sphinx builds the API reference from the docstrings (a warning or a
# broken cross-reference is an error), then MkDocs builds the pages around it and
# publishes the reference in site/api/ (docs/scripts/hooks.py).
API_HTML = build/docs-api
docs:
	rm -rf $(API_HTML)
	$(PY) -m sphinx -b html -E -W --keep-going -n -q docs/api $(API_HTML)
	$(PY) -m mkdocs build --strict

bench:
	$(PY) benchmarks/hmrnn_vs_lstm.py --out benchmarks/results
