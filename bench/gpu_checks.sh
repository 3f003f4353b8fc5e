#!/usr/bin/env bash
# The GPU figures the open issues owe, as one prepared command for a lent device machine
# (issue 28: `bench/full_configs.py` with AMP float16 + GradScaler and bfloat16; issue 30: the
# training step against torchvision, `bench/latency.py --training-only`). Run it from the repository
# root; each part has its own time limit so that one hang cannot eat the lease:
#
#   bash bench/gpu_wheels.sh                         # here, once: the wheels the image lacks, into .whl/
#   run(command="bash bench/gpu_checks.sh", carry=[".whl"], timeout_s=540)   # on the device machine
#
# Tables go to stdout, and JSON and logs to $OUT (the device tool's folder; bench/out/gpu elsewhere).
set -u
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_checks: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
$PY -c "import torch, panoptix; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
    || { echo "gpu_checks: no CUDA device or panoptix does not import"; exit 1; }
status=0
for amp in bfloat16 float16; do
    timeout "${FULL_CONFIGS_S:-200}" $PY bench/full_configs.py --device cuda --amp "$amp" \
        --out "$OUT/full_configs_$amp.json" > "$OUT/full_configs_$amp.log" 2>&1 || status=1
    cat "$OUT/full_configs_$amp.log"
done
timeout "${LATENCY_S:-120}" $PY bench/latency.py --device cuda --training-only --out "$OUT/latency.json" \
    > "$OUT/latency.log" 2>&1 || status=1
cat "$OUT/latency.log"
exit $status
