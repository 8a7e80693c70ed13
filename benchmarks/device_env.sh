# Sourced (from the repository root) by the device_*.sh scripts on the GPU machine: the wheels carried
# in .whl (bash benchmarks/device_wheels.sh) installed into /tmp/site and put on the path.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
