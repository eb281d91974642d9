# Every target runs `make deps` first: a fresh Debian machine needs nothing else.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
CWH   := $(VENV)/bin/cwh
export CWH_BASE_PORT ?= 17000
# RUNTIME=containers: every replica in its own container (env/containers.py); local by default.
ifdef RUNTIME
export CWH_RUNTIME := $(RUNTIME)
endif

.PHONY: deps images manifests up status down test test-dr test-containers test-all lint typecheck bench-failover bench-api bench-load bench-chaos bench-scale bench-dr bench-runtime bench-proxy bench-etcd bench-soak load slo slo-rules chaos gameday chaos-stop clean kind-up staging-load staging-chaos

deps:
	@./tools/deps.sh

# GNU make exits 2 whenever a recipe fails, whatever the recipe's own exit code, so `make load`
# cannot tell a failed gate (1) from an inconclusive one (2) by its status. With
# EXIT_CODE_FILE=PATH, the targets that judge (load, slo, chaos, gameday) write `cwh`'s own exit
# code there (CI pipelines read it: examples/ci/).
EXIT_CODE_FILE ?=
define keep_exit_code
code=$$?; if [ -n "$(EXIT_CODE_FILE)" ]; then echo $$code > "$(EXIT_CODE_FILE)"; fi; exit $$code
endef

# The containers runtime's image (Docker engine started when none answers; base image built from
# Debian's packages when no registry answers). `make up RUNTIME=containers` builds it too.
images: deps
	@$(PY) -m env.images

# The Kubernetes manifests (deploy/): every overlay rendered by the pinned kubectl and every
# object validated against the pinned Kubernetes release's schemas, offline. `make test` runs
# the same checks (tests/unit/test_manifests.py).
manifests: deps
	@$(PY) -m env.manifests

# On a machine with kind or a cluster (env/cluster.py; README "Kubernetes"): each target checks
# what it needs first (kind, docker, a kubeconfig: CWH_KUBECONFIG, else KUBECONFIG, else
# ~/.kube/config) and names what is missing. DRY_RUN=1 prints the commands and runs nothing.
KIND_CLUSTER ?= cwh
OVERLAY ?= staging
FLEET_WORKERS ?= 0
CLUSTER_FLAGS = $(if $(DRY_RUN),--dry-run)
# A kind cluster (three nodes), the image built and loaded onto it, the kind overlay applied,
# every rollout waited for.
kind-up: deps
	@$(PY) -m env.cluster kind-up --name $(KIND_CLUSTER) $(CLUSTER_FLAGS)

# A fleet from inside the cluster (OVERLAY=kind|staging): locust-worker scaled to FLEET_WORKERS
# (0: the overlay's), the master Job started and waited for, its report folder copied into
# reports/<UTC>-staging-load, gated on the cluster's Prometheus.
staging-load: deps
	@$(PY) -m env.cluster staging-load --overlay $(OVERLAY) --workers $(FLEET_WORKERS) \
		--users $(USERS) --duration $(DURATION) $(CLUSTER_FLAGS)

# A game day on the kubernetes runtime (EXPERIMENTS="a b", default cwh.chaos.KUBE_GAMEDAY; the
# phones go to CWH_KUBE_TARGET), then the SLO gate over its window on the cluster's Prometheus.
staging-chaos: deps
	@$(PY) -m env.cluster staging-chaos --overlay $(OVERLAY) $(CLUSTER_FLAGS) $(EXPERIMENTS)

up: deps
	@$(CWH) env up

status: deps
	@$(CWH) env status

down: deps
	@$(CWH) env down

# Lint and types first: they take seconds, the environment tests take minutes.
# `make test` is the local runtime's tests; the other runtimes' subsets run on their own:
# test-dr (backups, the restore and point-in-time drills, a second region) and test-containers
# (Docker), each in a session of its own; test-all is all three, as CI runs them. TESTS is the
# marker expression that picks the subset: a file of another subset needs TESTS= (every test
# collected), e.g. `make test TESTS= PYTEST_ARGS=tests/containers/test_runtime.py`.
# Without PYTEST_ARGS, the unit tests (tests/unit: no environment, nothing shared) run first
# on UNIT_WORKERS processes (pytest-xdist: 2 halve their time on 2 cores), then the rest in one
# session with one environment; a marker expression that leaves no unit test is no failure, and
# an interrupted unit session (pytest's 2: Ctrl-C, a collection error, pytest.exit) stops there.
# With PYTEST_ARGS, one session runs what they name.
TESTS ?= not containers and not dr
UNIT_WORKERS ?= 2
MARKERS = $(if $(strip $(TESTS)),-m "$(TESTS)")
test: deps lint typecheck
ifeq ($(strip $(PYTEST_ARGS)),)
	@status=0; \
	$(PY) -m pytest -n $(UNIT_WORKERS) $(MARKERS) tests/unit || { rc=$$?; \
		[ $$rc -eq 2 ] && exit 2; [ $$rc -eq 5 ] || status=1; }; \
	$(PY) -m pytest $(MARKERS) --ignore=tests/unit || status=1; \
	exit $$status
else
	@$(PY) -m pytest $(MARKERS) $(PYTEST_ARGS)
endif

test-dr: deps
	@$(PY) -m pytest -m dr $(PYTEST_ARGS)

test-containers: deps
	@$(PY) -m pytest -m containers $(PYTEST_ARGS)

# One after the other whatever make's -j (the sessions share the test environment's ports and
# run directory), each run even when one before it failed, failing when any did. PYTEST_ARGS
# goes to all three: a path of one subset leaves the others nothing to collect (pytest's 5).
test-all:
	@status=0; for t in test test-dr test-containers; do \
		$(MAKE) --no-print-directory $$t || status=1; done; exit $$status

lint: deps
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: deps
	@$(VENV)/bin/mypy env cwh reference_impl slo experiments bench

# Kills the PostgreSQL primary (postgres, then Patroni) under a steady write loop and prints RTO.
KILLS ?= 3
bench-failover: deps
	@$(PY) -m bench.failover --kills $(KILLS)

# The API's accepted requests/s against a bare aiohttp baseline behind the same HAProxy, and
# time to result at a fixed arrival rate. TTR_ONLY=1 measures time to result alone (TTR_SECONDS
# long), to compare changes to the job path in alternated runs.
bench-api: deps
	@$(PY) -m bench.api $(if $(TTR_ONLY),--ttr-only) $(if $(TTR_SECONDS),--ttr-seconds $(TTR_SECONDS))

# The load generator itself against a trivial sink: our phone's requests per core against a plain
# FastHttpUser (goal 0.7), then PHONES connected phones with heartbeats over two generator
# processes and loopback source addresses (goal 20,000), with memory per phone and CPU per 1,000
# heartbeats/s; exit 1 when a goal is missed. LOAD_PORT: the sinks' port (their admin ports are
# the next two; default CWH_BENCH_PORT or 21500).
PHONES ?= 20000
LOAD_PORT ?=
bench-load: deps
	@$(PY) -m bench.load --phones $(PHONES) $(if $(LOAD_PORT),--port $(LOAD_PORT))

# The fault proxy with no toxic against a direct connection, same run: round trips/s of small
# messages, bulk MB/s, connections/s, each a ratio beside the goal 0.8 (exit 1 when missed);
# PROFILE=1 records the proxy with py-spy (reports/<UTC>-bench-proxy/). KERNEL=1 adds the
# kernel's eBPF sockmap redirect as a third side, forwarding with no byte in user space (root).
PROFILE ?=
KERNEL ?=
bench-proxy: deps
	@$(PY) -m bench.proxy $(if $(PROFILE),--profile) $(if $(KERNEL),--kernel)

# etcd's memory under hours of Patroni's writes played in minutes, on a lone etcd per
# snapshot count with the environment's memory flags (reports/<UTC>-bench-etcd/). Exit 1 when
# the environment's snapshot count misses its goal. SNAPSHOTS=a,b compares others (default:
# the environment's and 10000).
RATE ?= 200
WRITES ?= 30000
SNAPSHOTS ?=
bench-etcd: deps
	@$(PY) -m bench.etcd_memory --rate $(RATE) --writes $(WRITES) \
		$(if $(SNAPSHOTS),--snapshot-counts $(SNAPSHOTS))

# The SLO gate over the last run (RUN=reports/... for another, PROMETHEUS_URL for staging's).
RUN ?= reports/latest
slo: deps
	@$(CWH) slo check --run $(RUN); $(keep_exit_code)

# Prometheus recording and burn-rate alert rules from the same SLO definitions.
slo-rules: deps
	@$(CWH) slo rules --output slo-rules.yml

# The main job: a fleet of phones. With no TARGET the local environment is brought up first.
USERS ?= 50
DURATION ?= 120
SHAPE ?= steady
WORKERS ?= 1
MIX ?= ios=60,android=40
SPAWN_RATE ?= 10
ARRIVAL_RATE ?= 0
SETTLE ?= 60
load: deps
	@$(CWH) load --users $(USERS) --duration $(DURATION) --shape $(SHAPE) \
		--workers $(WORKERS) --mix $(MIX) --spawn-rate $(SPAWN_RATE) --arrival-rate $(ARRIVAL_RATE) \
		--settle-s $(SETTLE); $(keep_exit_code)

clean: down
	@rm -rf $(VENV) .deps-stamp  # .deps-stamp: where older checkouts kept the stamp

# Chaos experiments (experiments/*.yaml) with a fleet in the background: no EXPERIMENT lists
# them. Each run writes reports/<UTC>-chaos-<name>/ (journal, ledger, chaos.json with RTO and
# RPO, the SLO gate's outputs, chaos.md, chaos.png).
EXPERIMENT ?=
chaos: deps
	@if [ -z "$(EXPERIMENT)" ]; then $(CWH) chaos list; else $(CWH) chaos run $(EXPERIMENT); fi; \
		$(keep_exit_code)

# A game day: one experiment of each kind in turn (EXPERIMENTS="a b" for others), one report;
# PLAN=gameday.yaml for a plan (repeats, jitter, fleet, weights: examples/gameday.yaml);
# RESUME=reports/<folder> runs what an interrupted game day had left.
EXPERIMENTS ?=
PLAN ?=
RESUME ?=
gameday: deps
	@$(CWH) chaos gameday $(if $(PLAN),--plan $(PLAN)) $(if $(RESUME),--resume $(RESUME)) \
		$(EXPERIMENTS); $(keep_exit_code)

chaos-stop: deps
	@$(CWH) chaos stop

# Each failover experiment REPEATS times with jittered timing, on an environment of its own:
# p50 / p95 / max of RTO per path and of RPO (reports/<UTC>-bench-chaos/).
# SOAK=30m: then a no-fault soak that long under a fleet and NOISE busy processes (default 1),
# counting spurious failovers (goal: none). FAILOVER=fast: the environment runs with the fast
# failure-detection timings (env/failover_timing.py); standard is the default.
REPEATS ?= 3
SOAK ?= 0
FAILOVER ?= $(or $(CWH_FAILOVER),standard)
bench-chaos: NOISE ?= 1
bench-chaos: deps
	@$(PY) -m bench.chaos --repeats $(REPEATS) --soak $(SOAK) --noise $(NOISE) \
		--failover $(FAILOVER)

# The API's HPA over REPEATS ramps: time to scale and time to drain beside the bounds its spec
# implies (reports/<UTC>-bench-scale/). SPECS=fast shortens the scale-down window to 20 s.
SPECS ?= shipped
SYNC ?= 15
# First REGION_TRIALS region-loss drills (the distribution of the tail lost and of the time to
# serve again), then restore time by database size (SIZES rows of requests): copy, WAL replay,
# whole cluster; plots and the RTO extrapolated (reports/<UTC>-bench-dr/).
SIZES ?= 10000,100000,1000000
REGION_TRIALS ?= 5
bench-dr: deps
	@$(PY) -m bench.dr --sizes $(SIZES) --region-trials $(REGION_TRIALS)

bench-scale: deps
	@$(PY) -m bench.scale --repeats $(REPEATS) --specs $(SPECS) --sync $(SYNC)

# The same fleet (USERS phones for DURATION) and the same PostgreSQL primary failover (KILLS
# postmaster kills) on the local runtime, then on the containers runtime, one at a time: up time,
# submits/s, submit and time-to-result p99, RTO, as ratios containers / local
# (reports/<UTC>-bench-runtime/). Base port CWH_BENCH_BASE_PORT (22400).
bench-runtime: deps
	@$(PY) -m bench.runtime --users $(USERS) --duration $(DURATION) --spawn-rate $(SPAWN_RATE) \
		--settle $(SETTLE) --kills $(KILLS)

# A fleet (USERS phones) in the soak shape for DURATION (30m, 90s, 1h; 30m by default here)
# against the local environment, every service process sampled: memory (PSS) and descriptor
# growth after the warm-up, latency p50/p95/p99 in the first and last windows, each beside its
# goal (< 10 % memory growth per hour, no descriptor growth, p99 within 20 %); plots in
# reports/<UTC>-bench-soak/. Exit code 1 when a goal is missed (EXIT_CODE_FILE as for load).
# Who leads is sampled too: with no fault injected every failover is a false alarm (goal:
# none), under NOISE busy processes beside the fleet (CPU contention; NOISE=0 for none).
# WARMUP (auto: about 45 minutes, until Redis holds its 30 minutes of responses and etcd its
# raft log; or a time, 0 for the first fifth of DURATION) runs before the judged DURATION.
bench-soak: DURATION = 30m
bench-soak: NOISE ?= 1
bench-soak: WARMUP ?= auto
bench-soak: deps
	@$(PY) -m bench.soak --duration $(DURATION) --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--settle $(SETTLE) --noise $(NOISE) --warmup "$(WARMUP)"; $(keep_exit_code)
