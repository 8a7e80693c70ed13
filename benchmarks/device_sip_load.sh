#!/usr/bin/env bash
# sip_load.py on the GPU machine's 16 idle cores: the new tree (this one) and an old tree
# (OLD=dir, a clean export of an earlier commit) in one call, so the pair shares a quiet host.
# SIPp and tcpdump are not on that image: they travel in .sipbench/ (this machine's binaries and
# their libraries, run through the bundled loader), with the server's wheels.
#   carry: [".sipbench", ".old15"]; COMMIT=<sha> OLD=.old15 bash benchmarks/device_sip_load.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .sipbench/whl/*.whl
export PYTHONPATH=/tmp/site PATH="$PWD/.sipbench/bin:$PATH"
ARGS=${ARGS:---start 200 --factor 1.5 --seconds 5 --max-rate 3000}
NEW=$PWD
OLDDIR=/tmp/old; rm -rf $OLDDIR; cp -r "${OLD:-.old15}" $OLDDIR
# the same benchmark script and peer kit drive both servers
cp benchmarks/sip_load.py benchmarks/hostload.py $OLDDIR/benchmarks/; cp sip_tests/pcap.py $OLDDIR/sip_tests/
cp .sipbench/prompt.ulaw sip_tests/peers/sipp/  # made by make_prompt.sh here (no espeak-ng/sox there)
export PEERS_DIR=$NEW/sip_tests/peers
for side in new old; do
  dir=$NEW; [ $side = old ] && dir=$OLDDIR
  extra=""; [ $side = old ] && extra="--no-reference"
  (cd $dir && PYTHONPATH=/tmp/site:$dir python3 benchmarks/sip_load.py $ARGS $extra --out $OUT/$side) > $OUT/$side.log 2>&1
  echo "$side rc=$?"; tail -3 $OUT/$side.log
done
echo "commit new=${COMMIT:-?} cores=$(nproc) load=$(cat /proc/loadavg)" > $OUT/meta.txt
cd $OUT && tar czf /tmp/sipload.tgz new old new.log old.log meta.txt && mv /tmp/sipload.tgz $OUT/
