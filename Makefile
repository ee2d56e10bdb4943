# Two commands for a fresh Debian machine (as root):
#   make demo   runs the agent on the embedded default config.toml
#   make test   runs the test suite
# Each installs what it needs (apt-get packages, a project venv in .venv) and is quick when done.

PYTHON ?= python3
VENV := .venv
APT_PACKAGES := python3 python3-venv python3-dev gcc make pkg-config librrd-dev rrdtool rrdcached \
	snmp snmpd monitoring-plugins-basic chromium restic smartmontools mrtg librrds-perl iputils-ping \
	libcrypt-des-perl libdigest-hmac-perl libcrypt-rijndael-perl \
	borgbackup systemd systemd-journal-remote sudo \
	unbound openssh-server postfix dovecot-imapd dovecot-pop3d dovecot-lmtpd vsftpd nginx \
	monitoring-plugins-standard bind9-dnsutils \
	redis-server nut-server nut-client munin munin-node munin-plugins-core fping \
	prometheus-node-exporter logrotate
STAMP := $(VENV)/.installed
NATIVE := collectors/_maildir_sizes.so

.PHONY: demo test lint deps system-deps bench clean deb

demo: deps
	@scripts/demo

# Lint and type check first (seconds, incremental through .mypy_cache), then the suite.
test: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -n 2 -q

lint: deps
	$(VENV)/bin/ruff check .

deps: system-deps $(STAMP) $(NATIVE)

# The mailbox scan's per-directory loop in C (collectors/mailboxes.py loads it with ctypes and
# falls back to Python without it).
$(NATIVE): collectors/maildir_sizes.c
	cc -O2 -Wall -Wextra -shared -fPIC -o $@ $<

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $(STAMP)

# The Debian 12 package (dist/monitor_VERSION-1_amd64.deb): see packaging/build-deb.
deb: system-deps $(NATIVE)
	packaging/build-deb

bench: deps
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache build dist $(NATIVE)
