# Estafeta: `make deploy` runs the main job on the local lab, `make test` runs
# lint and every test. Both create or refresh .venv themselves.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tools and tests need; installed only when missing.
APT_PACKAGES := python3 python3-venv python3-dev gcc git swaks fetchmail getmail6 knot knot-dnsutils postfix nftables debootstrap systemd-container openssh-client testssl.sh rspamd redis-server unbound dns-root-data

.PHONY: help deps venv lint test test-server test-ansible molecule lab lab-up lab-down deploy stop clean bench fuzz

help:
	@echo "make deploy   install into .venv, boot the lab, run site.yml and verify.yml on it"
	@echo "make test     lint and all tests (every Molecule scenario included)"
	@echo "make stop     stop the lab (same as make lab-down)"
	@echo "make lab-up / lab-down   boot / remove the nspawn lab hosts"
	@echo "make molecule  the Molecule scenarios (default, deliverability, backup)"
	@echo "make clean    stop the lab, remove .venv, .lab and caches"
	@echo "make fuzz     the long fuzz run: 10^6 inputs per parser (about 20 minutes)"
	@echo "make bench    estafeta vs Postfix+Dovecot benchmark (BENCH_ARGS=--quick: 1-2 minutes)"

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  for unit in knot rspamd redis-server unbound; do \
	    case " $$missing " in *" $$unit "*) \
	      if [ -d /run/systemd/system ]; then systemctl disable --now $$unit.service || true; \
	      else service $$unit stop >/dev/null 2>&1 || true; fi;; \
	    esac; \
	  done; \
	fi

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

test-server: venv
	$(BIN)/pytest server/tests

test-ansible: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests

test: deps lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest server/tests tests
	$(MAKE) --no-print-directory molecule

# The lab (issue #7): booted Debian 12 hosts under systemd-nspawn on br-lab.
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
# running lab and leave none behind.
molecule: venv
	@for scenario in default deliverability backup; do \
	  start=$$(date +%s); \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/molecule test -s $$scenario; \
	  echo "molecule $$scenario: passed in $$(( $$(date +%s) - start )) s"; \
	done

stop: lab-down

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
