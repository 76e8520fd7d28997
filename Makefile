.PHONY: build test clean
build:
	bash build/build.sh
test:
	bash scripts/test.sh
clean:
	rm -rf dist build/.work
