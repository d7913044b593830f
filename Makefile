# modelvc: `make demo` runs the story on an embedded broker; `make test` checks everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit integration kafka kafka-if-java test-unit test-tansu \
	test-kafka test-cluster test-store test-cluster-then-store test-kafka-in-slot \
	test-ui test-kafka-then-ui test-kafka-once browser screenshots bench up down clean

# Apache Kafka for the third test tier: Maven copies the pinned broker's jars into
# $(KAFKA_LIB) (ignored by git); modelvc/kafka_broker.py runs them with `java -cp`.
KAFKA_DIR   := brokers/kafka
KAFKA_LIB   := $(KAFKA_DIR)/target/lib
KAFKA_STAMP := $(KAFKA_DIR)/target/.copied
# Tier 3: every broker-backed test on one Apache Kafka broker (-k kafka keeps the [kafka]
# runs and tests/kafka; tests that need no broker or start their own Tansu run in tier 2 or 5).
KAFKA_TIER_TESTS ?= tests/kafka tests/integration tests/e2e -k kafka
# Tier 5: the artifact stores over local disk and moto's S3 server, and the end-to-end tests
# that start their own Tansu stack on S3 (tier 2 leaves those out).
STORE_TIER_TESTS ?= tests/store tests/integration/test_s3_artifacts.py tests/e2e/test_cli_artifacts.py
# Tier 5 also takes, to even out the side-by-side slots: the tests that start an embedded
# stack of their own, and the hostile-message module's Tansu runs. Tier 2 leaves them out.
OWN_STACK_TESTS ?= \
	tests/integration/test_audit.py::test_stopping_and_starting_the_embedded_stack_keeps_history \
	tests/e2e/test_cli_security.py::test_up_sign_predictions_makes_every_worker_sign_and_audit_verifies_it
TANSU_IN_TIER_5 ?= tests/integration/test_hostile_messages.py \
	tests/integration/test_oip.py tests/integration/test_typed_features.py
# The edge modules: their subject is the HTTP API, the CLI's output, a model file or what
# the auditor reads in the log, never what a broker does (ordering, offsets, transactions,
# groups, ACLs): what they check cannot differ between Tansu and Apache Kafka, so they run
# once, in tier 2 on Tansu, and tier 3 leaves them out. The broker's own behaviour is checked
# on both by tiers 2 and 3.
EDGE_TESTS ?= tests/integration/test_http_hygiene.py tests/integration/test_roles.py \
	tests/integration/test_schemathesis.py tests/integration/test_hostile_models.py \
	tests/integration/test_signatures.py tests/integration/test_oip.py \
	tests/integration/test_typed_features.py tests/integration/test_rollout_api.py \
	tests/integration/test_replay_route.py tests/e2e/test_cli_rollout.py \
	tests/e2e/test_cli_security.py tests/e2e/test_readme.py tests/integration/test_onnx_serving.py \
	tests/integration/test_audit_forgery.py
# Of the edge modules, these run once on Apache Kafka instead (tier 3e, after tier 3 in its
# slot; tier 2 leaves them out), which evens out the two slots: their tests without a broker
# parameter (`modelvc up` on a stack of its own) run there too.
KAFKA_ONCE_TESTS ?= tests/e2e/test_cli.py tests/integration/test_reference_decoder.py
# Tier 3b, after tier 5 in its slot: these modules' Apache Kafka runs (tier 3 leaves them
# out): the monitor and canary routing, each on one module stack.
KAFKA_IN_SLOT ?= tests/integration/test_monitor.py tests/integration/test_canary_routing.py
# Tier 6: the web console in a real browser (Debian's chromium; Playwright's own browser
# download is not reachable here). In CI a missing browser is installed, and one that cannot
# start fails the tier; elsewhere the tier says plainly that it was skipped and how to run it.
UI_TIER_TESTS ?= tests/ui
CHROMIUM ?= /usr/bin/chromium
# Tier 4: the 3-broker cluster under faults (tests/cluster; MODELVC_CLUSTER_SEED replays one).
CLUSTER_TIER_TESTS ?= tests/cluster
# --durations: each tier names its 10 slowest tests, where the time budget goes.
PYTEST := $(BIN)/pytest -q -p no:cacheprovider --durations=10
# `$(call timed,NAME,COMMAND)`: run COMMAND, then print how long it took, keep its status.
timed = start=$$(date +%s); $(2); status=$$?; \
	echo "== $(1): $$(( $$(date +%s) - start ))s (exit $$status)"; exit $$status

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m modelvc.demo

lint: $(STAMP)
	$(BIN)/ruff check streams workers modelvc tests bench
	$(BIN)/ruff format --check streams workers modelvc tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration tests/e2e

# Tier 1: pure unit tests. Tier 2: broker-backed tests on the embedded Tansu broker.
# Tier 3: tier 2's on Apache Kafka, but for the edge modules. Tier 4: a 3-broker Apache
# Kafka cluster under faults. Tier 5: the artifact stores over local disk and a real S3 API
# (moto's server). Tier 6: the web console in Chromium.
# Tiers 3 and 4 are required in CI (CI=true) and skipped, loudly, without Java and Maven.
# The broker-backed tiers wait on brokers and child processes far more than they compute
# (about 0.4 of a core each), so three slots run side by side: tier 2; tier 3 then 6; tier 4
# then 5 then 3b. (A fourth slot was measured: every tier took about twice as long and the
# whole ran longer. So was tier 1 in a fourth slot beside them: its unit tests took 17
# minutes instead of 2 and tiers 3 and 4 a quarter longer.) --output-sync prints each tier
# whole as it ends.
test: $(STAMP)
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck test-unit
	@$(MAKE) --no-print-directory kafka-if-java browser
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j3 --output-sync=target test-tansu test-kafka-then-ui \
	  test-cluster-then-store; \
	status=$$?; echo "== tiers 2-6 side by side: $$(( $$(date +%s) - start ))s (exit $$status)"; \
	exit $$status

# Tier 5 is CPU-bound (moto parses every byte sent to it) while tier 4's three brokers are
# busiest early: running it once tier 4 is done keeps the 2 cores from being oversubscribed.
test-cluster-then-store: $(STAMP)
	@$(MAKE) --no-print-directory test-cluster; cluster=$$?; \
	$(MAKE) --no-print-directory test-store; store=$$?; \
	$(MAKE) --no-print-directory test-kafka-in-slot; moved=$$?; \
	[ $$cluster -eq 0 ] && [ $$store -eq 0 ] && [ $$moved -eq 0 ]

test-kafka-then-ui: $(STAMP)
	@$(MAKE) --no-print-directory test-kafka; kafka=$$?; \
	$(MAKE) --no-print-directory test-kafka-once; once=$$?; \
	$(MAKE) --no-print-directory test-ui; ui=$$?; \
	[ $$kafka -eq 0 ] && [ $$once -eq 0 ] && [ $$ui -eq 0 ]

test-unit: $(STAMP)
	@$(call timed,tier 1 (unit),$(PYTEST) tests/unit)

test-store: $(STAMP)
	@$(call timed,tier 5 (artifact stores; tests with a stack of their own), \
	  MODELVC_TEST_BROKERS=tansu MODELVC_TEST_CLUSTER=0 \
	  $(PYTEST) $(STORE_TIER_TESTS) $(OWN_STACK_TESTS) $(TANSU_IN_TIER_5))

test-tansu: $(STAMP)
	@$(call timed,tier 2 (Tansu),MODELVC_TEST_BROKERS=tansu MODELVC_TEST_CLUSTER=0 \
	  $(PYTEST) tests/integration tests/e2e $(STORE_TIER_TESTS:%=--ignore=%) \
	  $(TANSU_IN_TIER_5:%=--ignore=%) $(KAFKA_ONCE_TESTS:%=--ignore=%) \
	  $(OWN_STACK_TESTS:%=--deselect=%))

# The browser: in CI, Debian's chromium is installed when missing (as root, with apt-get).
browser:
	@if [ "$$CI" = "true" ] && [ ! -x "$(CHROMIUM)" ]; then \
	  command -v apt-get >/dev/null || { echo "make browser: no $(CHROMIUM) and no apt-get"; exit 1; }; \
	  echo "installing Debian's chromium for tier 6"; \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } || \
	  { echo "make browser: apt-get install chromium failed; tier 6 cannot run"; exit 1; }; \
	fi

test-ui: $(STAMP)
	@if [ "$$CI" != "true" ] && [ ! -x "$(CHROMIUM)" ]; then \
	  echo "== tier 6 (console in Chromium): SKIPPED - no $(CHROMIUM). Install Debian's chromium"; \
	  echo "   (apt-get install chromium) or set CHROMIUM=/path/to/chrome, then run 'make test'"; \
	  echo "   (CI=true makes this tier required)."; \
	else \
	  $(call timed,tier 6 (console in Chromium),MODELVC_TEST_BROKERS=tansu MODELVC_TEST_CLUSTER=0 \
	    MODELVC_CHROMIUM=$(CHROMIUM) $(PYTEST) -rs $(UI_TIER_TESTS)); \
	fi

# `$(call kafka_tier,NAME,COMMAND)`: COMMAND timed when Java and Maven are here (or in CI,
# where their absence fails the tier); otherwise a plain word that it was skipped and how.
kafka_tier = if [ "$$CI" != "true" ] && ! { command -v java && command -v mvn; } >/dev/null 2>&1; then \
	  echo "== $(1): SKIPPED - no java or mvn on PATH. Install Java 17+ and Maven"; \
	  echo "   (apt-get install openjdk-17-jdk-headless maven), then run 'make test'"; \
	  echo "   (CI=true makes this tier required)."; \
	else \
	  $(MAKE) --no-print-directory kafka || exit 1; \
	  $(call timed,$(1),$(2)); \
	fi

kafka-if-java:
	@$(call kafka_tier,Apache Kafka jars,true)

test-kafka: $(STAMP)
	@$(call kafka_tier,tier 3 (Apache Kafka),MODELVC_TEST_BROKERS=kafka MODELVC_TEST_CLUSTER=0 \
	  $(PYTEST) $(KAFKA_TIER_TESTS) $(KAFKA_IN_SLOT:%=--ignore=%) $(EDGE_TESTS:%=--ignore=%) \
	  $(KAFKA_ONCE_TESTS:%=--ignore=%))

test-kafka-once: $(STAMP)
	@$(call kafka_tier,tier 3e (edge modules once; Apache Kafka),MODELVC_TEST_BROKERS=kafka \
	  MODELVC_TEST_CLUSTER=0 $(PYTEST) $(KAFKA_ONCE_TESTS) $(OWN_STACK_TESTS:%=--deselect=%))

test-kafka-in-slot: $(STAMP)
	@$(call kafka_tier,tier 3b (Apache Kafka; in tier 4 and 5's slot),MODELVC_TEST_BROKERS=kafka \
	  MODELVC_TEST_CLUSTER=0 $(PYTEST) $(KAFKA_IN_SLOT) -k kafka)

test-cluster: $(STAMP)
	@$(call kafka_tier,tier 4 (3-broker Apache Kafka cluster),MODELVC_TEST_BROKERS=kafka \
	  MODELVC_TEST_CLUSTER=1 $(PYTEST) $(CLUSTER_TIER_TESTS))

# Fetch Apache Kafka (once; the stamp makes it a no-op until the pom changes). The old
# jars go first, so a version bump never leaves two brokers on the classpath.
kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): $(KAFKA_DIR)/pom.xml
	@command -v mvn >/dev/null || { echo "make kafka needs Maven (apt-get install maven)"; exit 1; }
	@command -v java >/dev/null || { echo "make kafka needs Java 17+ (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	rm -rf $(KAFKA_LIB)
	cd $(KAFKA_DIR) && mvn -q -B dependency:copy-dependencies
	touch $@

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.fold_replay
	$(BIN)/python -m bench.commit_roundtrip
	$(BIN)/python -m bench.streams_memory
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.signing
	$(BIN)/python -m bench.artifacts
	$(BIN)/python -m bench.rest
	$(BIN)/python -m bench.monitor
	MODELVC_CHROMIUM=$(CHROMIUM) $(BIN)/python -m bench.console

# The README's and docs/'s screenshots of the console (1280x800 and 375x812), from a
# demo-like history on an embedded stack of their own.
screenshots: $(STAMP)
	MODELVC_CHROMIUM=$(CHROMIUM) $(BIN)/python -m tests.ui.screenshots docs/screenshots

up: $(STAMP)
	$(BIN)/modelvc up

down: $(STAMP)
	$(BIN)/modelvc down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .modelvc $(KAFKA_DIR)/target
