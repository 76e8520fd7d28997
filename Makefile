.PHONY: build image test clean
build:
	bash build/build.sh
image:
	bash build/image.sh
test:
	bash scripts/test.sh
clean:
	rm -rf dist build/.work
