# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# PIP_FIND_LINKS is cleared so that pip takes torch/torchvision from the package index as a matching pair.
PIP := PIP_FIND_LINKS= $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test install clean chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import gapvision, torch, torchvision"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/gapvision demo

# The web page's browser test drives Debian's chromium through Playwright (no browser download): install it when
# missing and we are root; otherwise that one test is skipped with the reason.
chromium:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: could not install chromium (needs root and apt-get): the browser test will be skipped"

test: $(VENV)/.installed chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
