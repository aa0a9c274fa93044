# make test / make demo: create or refresh .venv when requirements.txt changed, then run.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp

.PHONY: install test test-fast demo clean-venv

install: $(STAMP)

# The stamp is a copy of the requirements it was installed from: newer requirements.txt → reinstall.
$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	cp requirements.txt $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

clean-venv:
	rm -rf $(VENV)
