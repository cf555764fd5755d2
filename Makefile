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

docs:
	$(PY) -m mkdocs build --strict

bench:
	$(PY) benchmarks/hmrnn_vs_lstm.py --out benchmarks/results
