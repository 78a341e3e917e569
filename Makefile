# Estafeta: `make deploy` runs the main job on the local lab, `make test` runs
# lint and every test. Both create or refresh .venv themselves.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages, installed only when missing. `make deploy` needs only the
# first list on the controller: the venv (python3-dev and gcc for wheels
# without a binary for this platform), the lab (debootstrap, nspawn, ip,
# ssh-keygen); the lab hosts get their packages from labctl.py's image.
DEPLOY_PACKAGES := python3 python3-venv python3-dev gcc git debootstrap systemd-container iproute2 openssh-client
# What only the tests run on the controller: servers and clients to test
# against (tests/, server/tests/, molecule/), started by the tests themselves
# (PostgreSQL too: server/tests/_postgres.py runs its own in a temporary directory).
TEST_PACKAGES := postgresql-15 swaks fetchmail getmail6 knot knot-dnsutils pebble postfix nftables testssl.sh rspamd redis-server unbound dns-root-data chromium chromium-driver nginx php-fpm
# Installed after TEST_PACKAGES: with nginx and php-fpm in, Roundcube's web
# server dependency does not pull apache2 (the webmail role's test).
WEBMAIL_TEST_PACKAGES := roundcube roundcube-sqlite3 roundcube-plugins php-zip libnginx-mod-stream
# Seconds `make deps` waits for another apt or dpkg run (unattended-upgrades,
# an apt-get in another shell) to let go of the dpkg lock.
APT_LOCK_TIMEOUT ?= 300
# pytest-xdist workers for make test's parallel run (one per core here). Tests
# on fixed loopback addresses share an xdist_group; the `serial` ones (they
# bound latency) run alone afterwards. server/tests/_ports.py gives each worker
# its own ports.
PYTEST_WORKERS ?= 2
# The server tests make test runs a second time on the cluster backend
# (--store-backend cluster: each server on its own database and bucket of a
# private PostgreSQL and moto; tests marked local_store are left out): the
# modules that start a server or use the CLI on its store. Modules of
# parsers, policies and the cluster's own parts do not depend on the backend
# and run once.
CLUSTER_SUITE := $(wildcard server/tests/test_imap_*.py server/tests/test_pop3*.py) \
  $(addprefix server/tests/test_, smtp_inbound.py submission.py managesieve_session.py \
    store_backend.py smtp_shared.py cli_sieve.py greylist_mx.py dmarc_send_mx.py \
    cli_tlsrpt.py tlsrpt_intake.py dmarc_report_intake.py cli_dmarc.py doctor_cli.py \
    doctor_listeners.py acme_dane.py acme_server.py sending_limits.py burl.py dkim.py \
    dane_delivery.py fuzz_smtp.py guard.py login_cache.py login_history.py metrics.py \
    password_policy.py scram_login.py smtp_getaddr.py tls_close.py twofactor.py \
    twofactor_e2e.py web_account_browser.py web_proxy.py web_site.py retention.py \
    smtpsmuggling.py rspamd_mx.py smarthost.py durability.py delivery_local.py cli.py \
    cli_spam.py spam_mailnet.py privacy_export.py)
APT_GET ?= apt-get

# The lab's name (scripts/labctl.py): `lab` is br-lab on 198.51.100.0/24;
# another name (1-8 of a-z0-9) gets its own bridge br-NAME and /24, so that
# two clones on one machine can each run a lab (LAB_SUBNET picks the /24).
LAB_NAME ?= lab
LAB_SUBNET ?=
export LAB_NAME LAB_SUBNET

.PHONY: help deps deps-test venv lint test test-server test-ansible molecule lab lab-up lab-down deploy stop clean bench fuzz collection lock

help:
	@echo "make deploy   install into .venv, boot the lab, run site.yml and verify.yml on it"
	@echo "make test     lint and all tests (every Molecule scenario included)"
	@echo "make stop     stop the lab (same as make lab-down)"
	@echo "make lab-up / lab-down   boot / remove the nspawn lab hosts (LAB_NAME=NAME: a lab of its own)"
	@echo "make molecule  the Molecule scenarios (default, deliverability, backup, cluster, upgrade)"
	@echo "make clean    stop the lab, remove .venv, .lab and caches"
	@echo "make collection  build the estafeta.mail Ansible collection (scripts/build_collection.py)"
	@echo "make lock     regenerate server/requirements.lock (versions and hashes the hosts install)"
	@echo "make fuzz     the long fuzz run: 10^6 inputs per parser (about 20 minutes)"
	@echo "make bench    estafeta vs Postfix+Dovecot benchmark (BENCH_ARGS=--quick: 1-2 minutes)"

# Install the missing packages of $(1). apt-get runs again while another apt
# or dpkg run holds its lock (`apt-get update` has no wait of its own), up to
# APT_LOCK_TIMEOUT seconds, saying so every 15 s.
define apt_install
@missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
  apt_locked() { \
    start=$$(date +%s); said=0; \
    while :; do \
      if DEBIAN_FRONTEND=noninteractive "$$@" >"$$out" 2>&1; then grep -v '^Waiting for cache lock' "$$out" || true; return 0; fi; \
      lock=$$(grep -m1 -E 'Could not get lock|Unable to lock|Unable to acquire the dpkg|is locked by another process' "$$out" | sed 's/^[EW]: //') || { cat "$$out"; return 1; }; \
      waited=$$(( $$(date +%s) - start )); \
      if [ $$waited -ge $(APT_LOCK_TIMEOUT) ]; then \
        echo "make: gave up after $$waited s waiting for the dpkg lock: $$lock" >&2; \
        echo "make: another apt or dpkg run holds it (unattended-upgrades, an apt-get elsewhere); let it finish and run make again, or wait longer with APT_LOCK_TIMEOUT=SECONDS" >&2; \
        return 1; \
      fi; \
      if [ $$waited -ge $$said ]; then \
        echo "make: waiting for the dpkg lock ($$waited of $(APT_LOCK_TIMEOUT) s): $$lock"; said=$$(( said + 15 )); \
      fi; \
      sleep 2; \
    done; \
  }; \
  case " $$missing " in *" postfix "*) \
    seed=$$(mktemp); echo "postfix postfix/main_mailer_type select No configuration" >"$$seed"; \
    apt_locked debconf-set-selections "$$seed"; rm -f "$$seed";; \
  esac; \
  case " $$missing " in *" roundcube "*) \
    seed=$$(mktemp); printf '%s\n' "roundcube-core roundcube/dbconfig-install boolean true" \
      "roundcube-core roundcube/database-type select sqlite3" >"$$seed"; \
    apt_locked debconf-set-selections "$$seed"; rm -f "$$seed";; \
  esac; \
  apt_locked $(APT_GET) update -qq; \
  apt_locked $(APT_GET) install -y -qq $$missing; \
  for unit in knot rspamd redis-server unbound nginx php8.2-fpm postgresql; do \
    case " $$missing " in *" $$unit "*|*" $${unit%8.2-fpm}-fpm "*|*" $$unit-15 "*) \
      if [ -d /run/systemd/system ]; then systemctl disable --now $$unit.service || true; \
      else service $$unit stop >/dev/null 2>&1 || true; fi;; \
    esac; \
  done; \
fi
endef

# What deploying needs (every target that makes .venv runs it).
deps:
	$(call apt_install,$(DEPLOY_PACKAGES))

# What only the tests need (make test).
deps-test: deps
	$(call apt_install,$(TEST_PACKAGES))
	$(call apt_install,$(WEBMAIL_TEST_PACKAGES))

$(STAMP): requirements.txt server/pyproject.toml
	@$(MAKE) --no-print-directory deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -e ./server
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server/src
	cd server && ../$(BIN)/lint-imports
	$(BIN)/yamllint -s .
	@if ls playbooks/*.yml roles/*/tasks/*.yml >/dev/null 2>&1; then \
	  echo "$(BIN)/ansible-lint"; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint; \
	else echo "ansible-lint: no playbooks or roles yet"; fi

test-server: venv deps-test
	$(BIN)/pytest server/tests

test-ansible: venv deps-test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests

# The tests start estafeta thousands of times (servers, the CLI): its modules
# are compiled once here, since PYTHONDONTWRITEBYTECODE (set on CI machines)
# would have every process compile them again (half a second each).
test: deps-test lint
	$(BIN)/python -m compileall -q server/src
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=40 -m "not serial" server/tests tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest --durations=20 -m serial server/tests tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not serial" --store-backend cluster $(CLUSTER_SUITE)
	$(MAKE) --no-print-directory molecule

# The lab (issue #7): booted Debian 12 hosts under systemd-nspawn on the
# lab's bridge (br-lab, or br-$(LAB_NAME)).
lab-up: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-playbook -i inventories/lab playbooks/lab.yml -e lab_state=present

# The main job: the lab dns.lab (Knot + pebble), mx1.example.test and
# mx2.example.net, then site.yml and verify.yml, which ends with a summary
# (hosts, DNS records, endpoints, accounts, mail both ways with
# spf/dkim/dmarc=pass). Run again, it changes nothing and is faster.
deploy: lab-up
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-playbook -i inventories/lab playbooks/site.yml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-playbook -i inventories/lab playbooks/verify.yml

lab: deploy

lab-down: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-playbook -i inventories/lab playbooks/lab.yml -e lab_state=absent

# The scenarios boot their hosts with playbooks/lab.yml: they replace a
# running lab of this clone and leave none behind.
molecule: venv
	@for scenario in default deliverability backup cluster upgrade; do \
	  start=$$(date +%s); \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/molecule test -s $$scenario; \
	  echo "molecule $$scenario: passed in $$(( $$(date +%s) - start )) s"; \
	done

stop: lab-down

# The estafeta.mail Ansible collection (roles, modules, filters) as a tarball.
collection: venv
	$(BIN)/python scripts/build_collection.py

# server/requirements.lock: the exact versions and hashes of estafeta's
# dependencies for every platform the role deploys to (x86_64, aarch64).
lock: venv
	$(BIN)/python roles/estafeta/files/lock_requirements.py --source server --output server/requirements.lock

# The long fuzz run (make test runs the short Hypothesis profile): at least
# 10^6 inputs per parser, crashes saved to bench/results/fuzz-crashes/.
fuzz: venv
	$(BIN)/python bench/fuzz.py

clean:
	-test ! -x $(BIN)/ansible-playbook || $(MAKE) --no-print-directory lab-down
	rm -rf $(VENV) .lab .pytest_cache .mypy_cache .ruff_cache

# estafeta side by side with a private Postfix + Dovecot on loopback (installs
# them if missing, system services left off): bench/results/<date>.json + .png.
# About 15 minutes on 2 cores; BENCH_ARGS=--quick for one or two.
BENCH_ARGS ?=
bench: venv
	$(BIN)/pip install -q -r requirements-bench.txt
	$(BIN)/python bench/compare.py $(BENCH_ARGS)
