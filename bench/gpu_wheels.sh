#!/usr/bin/env bash
# Fetch, here, the wheels that panoptix needs and the GPU machine's image lacks (its image has torch
# 2.11, torchvision 0.26, timm, numpy, Pillow, safetensors, PyYAML, tqdm, tensorboard and matplotlib),
# at the versions this checkout's .venv has, into .whl/ (ignored by git), for `bench/gpu_checks.sh`.
# The device machine reaches no registry; the wheels travel with the call (`carry: [".whl"]`).
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for name in pydantic pydantic_core annotated-types typing-inspection pyspng deflate; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
    # shellcheck disable=SC2086
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d .whl "$name==$version"
done
ls -l .whl
