# Entry points; see scripts/ for what they do.
.PHONY: test demo lint devstack-up devstack-down bootstrap

PAPEREC := .venv/bin/paperec

bootstrap:
	bash scripts/bootstrap.sh

# Extra pytest arguments: make test ARGS="tests/unit -k settings"
test:
	bash scripts/test.sh $(ARGS)

demo: bootstrap
	$(PAPEREC) demo $(ARGS)

lint: bootstrap
	bash scripts/lint.sh

devstack-up: bootstrap
	$(PAPEREC) devstack up

devstack-down: bootstrap
	$(PAPEREC) devstack down
