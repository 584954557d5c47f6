# Fruits! — everything a fresh machine with Python 3.11 and Java 17 needs is installed by these targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
# Real ImageNet weights: Keras' own download by default; the verified copy in ../shared when it is there (offline).
WEIGHTS ?= $(if $(wildcard $(SHARED)/models/mobilenet_v2_imagenet_notop.weights.h5),$(SHARED)/models/mobilenet_v2_imagenet_notop.weights.h5,imagenet)
DEMO_HOME ?= demo-home
JARS_DIR := .cache/jars

.PHONY: install jars demo test test-fast bench clean weed s3-jars test-s3 bench-s3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed $(VENV)/.jars

# Delta's jars: Ivy through delta-spark; if Ivy cannot reach Maven Central, Maven into .cache/jars (see fruits/spark/jars.py).
jars: $(VENV)/.jars
$(VENV)/.jars: $(VENV)/.installed
	@if [ -d $(JARS_DIR) ]; then echo "using Delta jars in $(JARS_DIR)"; \
	elif $(PY) -m fruits.spark.session warm >/dev/null 2>.cache-jars.log; then echo "Delta jars resolved through Ivy"; rm -f .cache-jars.log; \
	else echo "Ivy could not resolve Delta (see .cache-jars.log); trying Maven"; $(PY) -m fruits.spark.jars maven $(JARS_DIR); fi
	touch $@

# hadoop-aws and its AWS SDK bundle, which sessions add for s3a:// homes only (fruits/spark/jars.py): Ivy, else Maven.
s3-jars: $(VENV)/.s3-jars
$(VENV)/.s3-jars: $(VENV)/.jars
	@if [ -d $(JARS_DIR) ] && ls $(JARS_DIR)/hadoop-aws-*.jar >/dev/null 2>&1; then echo "using S3A jars in $(JARS_DIR)"; \
	elif [ ! -d $(JARS_DIR) ] && $(PY) -m fruits.spark.session warm --s3 >/dev/null 2>.cache-jars.log; then echo "S3A jars resolved through Ivy"; rm -f .cache-jars.log; \
	else echo "resolving Delta's and S3A's jars with Maven into $(JARS_DIR)"; $(PY) -m fruits.spark.jars maven $(JARS_DIR); fi
	touch $@

# SeaweedFS (a real S3 server for tests/test_s3.py and bench/s3_throughput.py), built once into ~/.cache/fruits/weed.
weed:
	.ci/build-weed

# FRUITS_JARS_DIR is only set (non-empty) when the Maven fallback filled .cache/jars.
RUN = FRUITS_JARS_DIR=$$([ -d $(JARS_DIR) ] && echo $(abspath $(JARS_DIR)))

demo: install
	$(RUN) $(PY) examples/demo.py --home $(DEMO_HOME) --weights $(WEIGHTS)

# The whole suite (what CI runs); the 20 slowest tests are listed at the end so slow ones stay visible.
test: install
	$(RUN) $(PY) -m pytest tests --durations=20

# The fast tier: no Spark, no TensorFlow, no ../shared (tests marked `fast`); a run of it fails if one starts a JVM.
test-fast: $(VENV)/.installed
	$(PY) -m pytest tests -m fast -q

bench: install
	$(RUN) $(PY) bench/ingest_throughput.py --weights $(WEIGHTS)

test-s3: install s3-jars weed
	$(RUN) FRUITS_REQUIRE_S3=1 $(PY) -m pytest tests/test_s3.py

bench-s3: install s3-jars weed
	$(RUN) $(PY) bench/s3_throughput.py --weights $(WEIGHTS)

clean:
	rm -rf $(DEMO_HOME) .pytest_cache spark-warehouse
